"""The store's index settings (issue 18): StoreSettings' HNSW, quantization and on-disk
choices reach the Qdrant Edge shard the store creates and the index optimize() builds, and a
store built with them still finds the right neighbours. Real Qdrant Edge, real embeddings."""

from __future__ import annotations

import http.server
import json
import statistics
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from evals.bench_scale import mixed_vectors
from rag.compose import build_embedder
from rag.schema import Chunk
from rag.settings import Settings, StoreSettings
from rag.store import CollectionInfo, EdgeStore, point_id
from tests.conftest import HANDBOOK_QUESTIONS, example_chunk_texts

# Past Qdrant's indexing threshold (10 MB of vectors, about 6,500 of 384 dims): optimize()
# builds the HNSW graph and the int8 copy rather than leaving the segment brute force.
POINTS = 8_000
# Not the defaults, so a setting that never reached the shard shows.
TUNED = StoreSettings(
    hnsw_m=24,
    hnsw_ef_construct=64,
    hnsw_ef=128,
    quantization="int8",
    quantization_oversampling=3.0,
    vectors_on_disk=True,
)


def segment_configs(store_path: Path) -> list[dict[str, Any]]:
    segments = (store_path / "shard" / "segments").glob("*/segment.json")
    return [json.loads(s.read_text())["config"]["vector_data"]["dense"] for s in segments]


def test_a_new_store_is_created_with_the_index_settings(tmp_path: Path) -> None:
    info = CollectionInfo("sentence-transformers/all-MiniLM-L6-v2", 384)
    store = EdgeStore(tmp_path / "tuned", TUNED)
    store.ensure_collection(info)
    store.close()
    config = json.loads((tmp_path / "tuned" / "shard" / "edge_config.json").read_text())
    hnsw = config["hnsw_config"]
    assert (hnsw["m"], hnsw["ef_construct"]) == (24, 64)
    assert config["quantization_config"]["scalar"]["type"] == "int8"
    assert config["vectors"]["dense"]["memory"] == "cold"

    plain = EdgeStore(tmp_path / "plain", StoreSettings(quantization="none", vectors_on_disk=False))
    plain.ensure_collection(info)
    plain.close()
    config = json.loads((tmp_path / "plain" / "shard" / "edge_config.json").read_text())
    assert config.get("quantization_config") is None
    assert config["vectors"]["dense"]["memory"] != "cold"


def test_a_profiles_store_section_reaches_the_store_the_composition_root_builds(
    tmp_path: Path,
) -> None:
    from rag.compose import build_store
    from tests.conftest import local_settings

    settings = local_settings(tmp_path, store={"hnsw_m": 24, "hnsw_ef": 300})
    store = build_store(settings)
    assert isinstance(store, EdgeStore)
    assert (store.settings.hnsw_m, store.settings.hnsw_ef) == (24, 300)
    store.close()


@pytest.mark.slow
def test_a_tuned_index_is_built_with_its_settings_and_finds_the_exact_neighbours(
    provisioned: Settings, tmp_path: Path
) -> None:
    embedder = build_embedder(provisioned)
    texts = example_chunk_texts(embedder.tokenizer)
    real = embedder.embed_documents(texts)
    store = EdgeStore(tmp_path / "edge", TUNED)
    store.ensure_collection(CollectionInfo(embedder.name, embedder.dimension))
    ids = [point_id(f"doc/{i // 50}.md", i % 50, str(i)) for i in range(POINTS)]
    for at in range(0, POINTS, 2000):
        stop = min(POINTS, at + 2000)
        batch = [
            Chunk(id=ids[i], text=texts[i % len(texts)], path=f"doc/{i // 50}.md")
            for i in range(at, stop)
        ]
        store.upsert(batch, mixed_vectors(real, at, stop), [50] * len(batch))
    assert store.optimize() is True
    built = [c for c in segment_configs(tmp_path / "edge") if c["index"]["type"] == "hnsw"]
    assert built, "optimize() built no HNSW segment"
    for config in built:
        assert config["index"]["options"]["m"] == 24
        assert config["index"]["options"]["ef_construct"] == 64
        assert config["quantization_config"]["scalar"]["type"] == "int8"
        assert config["storage_type"] == "Mmap"

    # Each real chunk's own vector: the chunk itself first, through the quantized index.
    for index, vector in enumerate(real):
        assert store.search(vector, 10)[0].chunk.id == ids[index], texts[index][:80]
    probes = [embedder.embed_query(q) for q in HANDBOOK_QUESTIONS]
    recall = statistics.fmean(
        len({h.chunk.id for h in store.search(p, 10, exact=True)} & {h.chunk.id for h in found})
        / 10
        for p, found in ((p, store.search(p, 10)) for p in probes)
    )
    assert recall >= 0.9
    # Hybrid search runs through the same tuned dense prefetch.
    hybrid = store.search(probes[0], 10, text=HANDBOOK_QUESTIONS[0])
    assert len(hybrid) == 10
    store.close()


class _RecordingQdrant(http.server.BaseHTTPRequestHandler):
    """Answers the few REST calls a new collection and a search make, as a Qdrant server
    answers them, and keeps each request's JSON body: no Qdrant server can be installed here
    (not on PyPI or Debian), and qdrant-client's embedded mode drops HNSW and quantization
    settings, so the request a server would receive is what can be checked."""

    received: ClassVar[list[tuple[str, str, Any]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.received.append((self.command, self.path, body))
        if self.path.endswith("/exists"):
            result: Any = {"exists": False}
        elif "/points/query" in self.path:
            result = {"points": []}
        elif "/index" in self.path:
            result = {"operation_id": 0, "status": "completed"}
        else:
            result = True
        payload = json.dumps({"result": result, "status": "ok", "time": 0.0}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    # http.server's handler names.
    do_GET = do_PUT = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def test_a_server_store_sends_the_index_settings_to_qdrant() -> None:
    import numpy as np

    from rag.store import ServerStore

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingQdrant)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        store = ServerStore("tuned", url=url, settings=TUNED)
        store.ensure_collection(CollectionInfo("sentence-transformers/all-MiniLM-L6-v2", 384))
        store.search(np.ones(384, dtype=np.float32), 5)
        store.search(np.ones(384, dtype=np.float32), 5, text="annual leave")
        store.close()
    finally:
        server.shutdown()
    created = next(
        b for m, p, b in _RecordingQdrant.received if m == "PUT" and p == "/collections/tuned"
    )
    assert created["hnsw_config"]["m"] == 24 and created["hnsw_config"]["ef_construct"] == 64
    assert created["quantization_config"]["scalar"]["type"] == "int8"
    assert created["vectors"]["dense"]["on_disk"] is True
    dense, hybrid = [b for _, p, b in _RecordingQdrant.received if p.endswith("/points/query")]
    expected = {"hnsw_ef": 128, "quantization": {"rescore": True, "oversampling": 3.0}}
    assert {k: dense["params"][k] for k in expected} == expected
    assert {k: hybrid["prefetch"][0]["params"][k] for k in expected} == expected
