"""The embedded store at size: the HNSW index ingest builds, and the payload indexes that keep
file deletes and owner-scoped searches off a full scan. Real Qdrant Edge, real embeddings."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from evals.bench_ingest import replicate_vectors
from rag.compose import build_embedder
from rag.schema import Chunk, Hit
from rag.settings import Settings
from rag.store import DENSE, INDEXED_FIELDS, SHARED, CollectionInfo, EdgeStore, point_id
from tests.conftest import HANDBOOK_QUESTIONS, example_chunk_texts

# Past Qdrant's indexing threshold (10 MB of vectors, about 6,500 of 384 dims), where
# optimize() builds HNSW rather than leaving the segment brute force.
POINTS = 12_000


@pytest.mark.slow
def test_optimize_builds_hnsw_whose_results_match_exact_search(
    provisioned: Settings, tmp_path: Path
) -> None:
    embedder = build_embedder(provisioned)
    texts = example_chunk_texts(embedder.tokenizer)
    vectors = replicate_vectors(embedder.embed_documents(texts), POINTS)
    store = EdgeStore(tmp_path / "edge")
    store.ensure_collection(CollectionInfo(embedder.name, embedder.dimension))
    # Three owners in turn, a third of the points each: replicated vectors put every owner's
    # copies among any question's nearest, so an owner-scoped search has points to leave out.
    owners = ("alice", "bob", SHARED)
    for at in range(0, POINTS, 2000):
        owner = owners[at // 2000 % len(owners)]
        batch = [
            Chunk(
                id=point_id(f"{owner}/{i}.md", 0, str(i)),
                text=texts[i % len(texts)],
                path=f"{owner}/{i}.md",
            )
            for i in range(at, at + 2000)
        ]
        store.upsert(batch, vectors[at : at + 2000], [1] * len(batch), owner=owner)
    probes = [embedder.embed_query(q) for q in HANDBOOK_QUESTIONS]

    def exact_ids(probe: np.ndarray) -> set[str]:
        # Every point on its float32 vector: past the index and the int8 copy alike.
        return {h.chunk.id for h in store.search(probe, 10, exact=True)}

    # The count covers the BM25 vectors (always indexed) and, once built, the dense HNSW.
    assert store._require().info().indexed_vectors_count == POINTS
    assert store.optimize() is True
    assert store._require().info().indexed_vectors_count == 2 * POINTS
    assert store.optimize() is False, "an optimized store has nothing left to rebuild"
    recall = statistics.fmean(
        len(exact_ids(p) & {h.chunk.id for h in store.search(p, 10)}) / 10 for p in probes
    )
    assert recall >= 0.9

    def owners_of(hits: list[Hit]) -> set[str]:
        return {h.chunk.path.split("/")[0] for h in hits}

    for probe, question in zip(probes, HANDBOOK_QUESTIONS, strict=True):
        assert owners_of(store.search(probe, 30, text=question)) == set(owners), question
        scoped = store.search(probe, 10, text=question, owners=("alice", SHARED))
        assert len(scoped) == 10 and owners_of(scoped) <= {"alice", SHARED}, question
        assert owners_of(store.search(probe, 10, owners=("bob",))) == {"bob"}, question
    store.close()


def test_a_store_made_before_payload_indexes_gets_them_on_open(
    provisioned: Settings, tmp_path: Path
) -> None:
    info = CollectionInfo("sentence-transformers/all-MiniLM-L6-v2", 384)
    # The layout stores had before payload indexes: a shard and the metadata file, no index.
    config = qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine)}
    )
    (tmp_path / "edge").mkdir()
    qe.EdgeShard.create(str(tmp_path / "edge" / "shard"), config).close()
    (tmp_path / "edge" / "guardrag-collection.json").write_text(
        json.dumps({"embedder": info.embedder, "dimension": info.dimension})
    )
    store = EdgeStore(tmp_path / "edge")
    assert store.open_existing() == info
    assert not store._require().info().payload_schema
    store.ensure_collection(info)
    assert set(store._require().info().payload_schema) == set(INDEXED_FIELDS)
    store.close()
