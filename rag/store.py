"""Where chunks live: Qdrant, embedded (Qdrant Edge, the real engine in-process) or a server.

Both stores keep a dense vector and a BM25 sparse vector per chunk, and both remember which
embedder filled them: mixing vectors from two embedders in one collection is refused. Each chunk
names its owner (a user, or "shared"); a search for a user sees that user's chunks and shared ones.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.schema import Chunk, Hit
from rag.settings import StoreSettings

DENSE = "dense"
SPARSE = "bm25"
# Stable namespace so the same chunk of the same file always gets the same point id.
_POINT_NAMESPACE = uuid.UUID("5f1c3c1e-8f64-4d0e-9d7a-6a2b8f0f4c11")
# The owner of chunks everyone may retrieve: what `guardrag ingest` writes. Chunks stored before
# owners existed carry no owner field and count as shared.
SHARED = "shared"
OWNER = "owner"
# Payload fields filtered on: a file's chunks (replace, delete) and an asker's scope (search).
INDEXED_FIELDS = ("path", "file_hash", OWNER)


class StoreError(RuntimeError):
    """The store cannot be used as asked; the message says why and what to do."""


def ranked(hits: list[Hit]) -> list[Hit]:
    """Best first; equal scores (frequent with reciprocal-rank fusion) by chunk id, so a
    question always gets the same order, run after run."""
    return sorted(hits, key=lambda h: (-h.score, h.chunk.id))


def point_id(path: str, ordinal: int, content_hash: str, owner: str = SHARED) -> str:
    # Shared chunks keep the id they had before owners existed, so older stores stay
    # idempotent; a user's chunk gets its own id, so two users' "notes/a.md" never collide.
    key = f"{path}\x00{ordinal}\x00{content_hash}"
    if owner != SHARED:
        key = f"{owner}\x00{key}"
    return str(uuid.uuid5(_POINT_NAMESPACE, key))


@dataclass(frozen=True)
class CollectionInfo:
    embedder: str
    dimension: int


@dataclass(frozen=True)
class FileState:
    """What the store holds for one file: the file hash(es) its points carry, and how many."""

    file_hashes: frozenset[str]
    points: int
    expected_points: int


def _payload(chunk: Chunk, chunk_count: int, owner: str) -> dict[str, Any]:
    payload = asdict(chunk)
    payload.pop("id")
    payload["injection_categories"] = list(chunk.injection_categories)
    payload["chunk_count"] = chunk_count
    payload[OWNER] = owner
    return payload


def owner_of(payload: dict[str, Any]) -> str:
    return str(payload.get(OWNER) or SHARED)


def _chunk(point_id_value: Any, payload: dict[str, Any]) -> Chunk:
    return Chunk(
        id=str(point_id_value),
        text=payload["text"],
        path=payload["path"],
        section=payload.get("section", ""),
        page=payload.get("page"),
        start=payload.get("start", 0),
        end=payload.get("end", 0),
        content_hash=payload.get("content_hash", ""),
        file_hash=payload.get("file_hash", ""),
        injection_score=payload.get("injection_score", 0.0),
        injection_categories=tuple(payload.get("injection_categories", ())),
    )


class Store(Protocol):
    def ensure_collection(self, info: CollectionInfo) -> None: ...
    def open_existing(self) -> CollectionInfo | None: ...
    def upsert(
        self,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        chunk_counts: Sequence[int],
        owner: str = SHARED,
    ) -> None: ...
    def delete_file(
        self, path: str, keep_file_hash: str | None = None, owner: str = SHARED
    ) -> None: ...
    def file_states(self, owner: str = SHARED) -> dict[str, FileState]:
        """What the store holds for each file of one owner."""
        ...

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        text: str | None = None,
        owners: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Nearest chunks to `vector`; given the query `text` too, dense and BM25 results are
        fused by reciprocal rank (RRF). Given `owners`, only their chunks are searched (chunks
        without an owner count as shared)."""
        ...

    def optimize(self) -> bool:
        """Build the search index where the store is large enough for one to pay (after a
        large ingest); True if anything was rebuilt."""
        ...

    def scroll_chunks(self) -> Iterable[Chunk]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def _check_info(stored: CollectionInfo, wanted: CollectionInfo, where: str) -> None:
    if stored != wanted:
        raise StoreError(
            f"collection at {where} holds vectors from embedder {stored.embedder} "
            f"({stored.dimension} dims), but this profile embeds with {wanted.embedder} "
            f"({wanted.dimension} dims). Use another collection (store.collection) or "
            "re-ingest into an empty one; vectors from two embedders are never mixed."
        )


class _Bm25:
    """Qdrant's own BM25 tokenizer (from qdrant-edge), so both stores score sparse alike."""

    def __init__(self) -> None:
        import qdrant_edge as qe

        self._bm25 = qe.Bm25()

    def document(self, text: str) -> tuple[list[int], list[float]]:
        vector = self._bm25.embed_document(text)
        return list(vector.indices), list(vector.values)

    def query(self, text: str) -> tuple[list[int], list[float]]:
        vector = self._bm25.embed_query(text)
        return list(vector.indices), list(vector.values)


# Reciprocal-rank fusion's constant (Cormack et al.); Qdrant's default too.
RRF_K = 60
# Points below which a segment is searched by brute force rather than its HNSW graph, in KB of
# vectors (Qdrant's default; about 6,500 chunks of 384 dims).
FULL_SCAN_THRESHOLD_KB = 10_000
# The int8 quantile: the extreme 1 % of values are clipped, so one outlier does not waste the
# 256 levels (Qdrant's recommended setting).
INT8_QUANTILE = 0.99


def _edge_owner_filter(owners: Sequence[str]) -> Any:
    import qdrant_edge as qe

    either: list[Any] = [qe.FieldCondition(OWNER, match=qe.MatchAny(list(owners)))]
    if SHARED in owners:
        either.append(qe.IsEmptyCondition(OWNER))
    return qe.Filter(should=either)


def _edge_file_filter(path: str, owner: str, keep_file_hash: str | None) -> Any:
    import qdrant_edge as qe

    must_not: list[Any] = []
    if keep_file_hash is not None:
        must_not.append(qe.FieldCondition("file_hash", match=qe.MatchValue(keep_file_hash)))
    return qe.Filter(
        must=[qe.FieldCondition("path", match=qe.MatchValue(path)), _edge_owner_filter([owner])],
        must_not=must_not or None,
    )


class EdgeStore:
    """Embedded store: one Qdrant Edge shard under the data directory."""

    def __init__(self, path: Path, settings: StoreSettings | None = None) -> None:
        self.path = path
        # The index and quantization a new shard is created with, and how searches use them.
        self.settings = settings or StoreSettings()
        self._meta_path = path / "guardrag-collection.json"
        self._shard: Any = None
        self._bm25 = _Bm25()
        # Edge shards are not documented as safe for concurrent writers from Python threads.
        self._lock = threading.Lock()

    def ensure_collection(self, info: CollectionInfo) -> None:
        import qdrant_edge as qe

        if self._meta_path.exists():
            stored = CollectionInfo(**json.loads(self._meta_path.read_text()))
            _check_info(stored, info, str(self.path))
            if self._shard is None:
                self._shard = self._load_shard()
            self._index_payload_fields()
            return
        self.path.mkdir(parents=True, exist_ok=True)
        shard_dir = self.path / "shard"
        if shard_dir.exists():
            # A shard without the metadata file is a creation interrupted before any chunk was
            # written (the file is written right after the shard is created): start it again.
            shutil.rmtree(shard_dir)
        self._shard = qe.EdgeShard.create(str(shard_dir), self._config(info))
        self._index_payload_fields()
        # Written last: a shard without this file is an interrupted creation, refused below.
        self._meta_path.write_text(json.dumps(asdict(info)))

    def _config(self, info: CollectionInfo) -> Any:
        import qdrant_edge as qe

        tuning = self.settings
        dense = qe.EdgeVectorParams(
            size=info.dimension,
            distance=qe.Distance.Cosine,
            # Cold: memory-mapped, paged in as searches touch it; Cached: read into RAM.
            memory=qe.Memory.Cold if tuning.vectors_on_disk else qe.Memory.Cached,
        )
        quantization = (
            qe.ScalarQuantizationConfig(
                qe.ScalarType.Int8, quantile=INT8_QUANTILE, memory=qe.Memory.Pinned
            )
            if tuning.quantization == "int8"
            else None
        )
        return qe.EdgeConfig(
            vectors={DENSE: dense},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=qe.HnswIndexConfig(
                m=tuning.hnsw_m,
                ef_construct=tuning.hnsw_ef_construct,
                full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
            ),
            quantization_config=quantization,
        )

    def _search_params(self, limit: int, exact: bool) -> Any:
        import qdrant_edge as qe

        tuning = self.settings
        if exact:
            # Every point against the float32 vectors: the ground truth the index is measured by.
            ignore = qe.QuantizationSearchParams(ignore=True)
            return qe.SearchParams(exact=True, quantization=ignore)
        quantization = (
            qe.QuantizationSearchParams(rescore=True, oversampling=tuning.quantization_oversampling)
            if tuning.quantization == "int8"
            else None
        )
        return qe.SearchParams(hnsw_ef=max(tuning.hnsw_ef, limit), quantization=quantization)

    def _index_payload_fields(self) -> None:
        # Without these, deleting a file's chunks and an owner-scoped search read every
        # point's payload: at 100k chunks that is tens of ms a search, a scan a changed file.
        # Shards made before the indexes existed get them here.
        import qdrant_edge as qe

        missing = set(INDEXED_FIELDS) - set(self._shard.info().payload_schema)
        for field in sorted(missing):
            self._shard.update(
                qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword)
            )

    def open_existing(self) -> CollectionInfo | None:
        """Open the shard if one exists, returning what it was filled with."""

        if not self._meta_path.exists():
            return None
        info = CollectionInfo(**json.loads(self._meta_path.read_text()))
        if self._shard is None:
            self._shard = self._load_shard()
        return info

    def _load_shard(self) -> Any:
        import qdrant_edge as qe

        try:
            return qe.EdgeShard.load(str(self.path / "shard"))
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise StoreError(
                    f"the store at {self.path} is open in another process (a running "
                    "`guardrag chat`?): an embedded store has one user at a time. Stop that "
                    "process, or use a Qdrant server (store.kind: server) for shared access"
                ) from exc
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc

    def _require(self) -> Any:
        if self._shard is None:
            raise StoreError(f"no collection at {self.path}: run `guardrag ingest PATH` first")
        return self._shard

    def upsert(
        self,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        chunk_counts: Sequence[int],
        owner: str = SHARED,
    ) -> None:
        import qdrant_edge as qe

        shard = self._require()
        points = []
        for chunk, vector, count in zip(chunks, dense, chunk_counts, strict=True):
            indices, values = self._bm25.document(chunk.text)
            vectors = {DENSE: vector.tolist(), SPARSE: qe.SparseVector(indices, values)}
            points.append(qe.Point(chunk.id, vectors, _payload(chunk, count, owner)))
        with self._lock:
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.flush()

    def delete_file(
        self, path: str, keep_file_hash: str | None = None, owner: str = SHARED
    ) -> None:
        import qdrant_edge as qe

        shard = self._require()
        selector = _edge_file_filter(path, owner, keep_file_hash)
        with self._lock:
            shard.update(qe.UpdateOperation.delete_points_by_filter(selector))
            shard.flush()

    def _scroll(self) -> Iterable[tuple[Any, dict[str, Any]]]:
        import qdrant_edge as qe

        shard = self._require()
        offset = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=512, with_payload=True, with_vector=False)
            )
            for record in records:
                yield record.id, record.payload
            if offset is None:
                return

    def file_states(self, owner: str = SHARED) -> dict[str, FileState]:
        return _file_states(self._scroll(), owner) if self._shard is not None else {}

    def scroll_chunks(self) -> Iterable[Chunk]:
        for pid, payload in self._scroll():
            yield _chunk(pid, payload)

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        text: str | None = None,
        owners: Sequence[str] | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """As `Store.search`; `exact` skips the index and quantization and compares every
        point (the benchmarks' ground truth)."""
        import qdrant_edge as qe

        shard = self._require()
        scope = _edge_owner_filter(owners) if owners is not None else None
        dense = qe.Query.Nearest(vector.tolist(), using=DENSE)
        params = self._search_params(limit, exact)
        if text is None:
            request = qe.QueryRequest(
                limit=limit, query=dense, filter=scope, params=params, with_payload=True
            )
        else:
            sparse = qe.Query.Nearest(qe.SparseVector(*self._bm25.query(text)), using=SPARSE)
            request = qe.QueryRequest(
                limit=limit,
                # Scoped in each prefetch: fusing unscoped candidates and filtering afterwards
                # would let another user's chunks crowd out the asker's.
                prefetches=[
                    qe.Prefetch(limit=limit, query=dense, filter=scope, params=params),
                    qe.Prefetch(limit=limit, query=sparse, filter=scope),
                ],
                # The stubs say `Fusion`; at run time the query is the Rrf variant, built with k.
                query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]
                filter=scope,
                with_payload=True,
            )
        return ranked([Hit(_chunk(p.id, p.payload), float(p.score)) for p in shard.query(request)])

    def optimize(self) -> bool:
        # Edge runs no optimizers in the background: until this runs, every search is brute
        # force (13 ms p95 at 100k chunks, 2 ms with HNSW in make bench-ingest). Segments under
        # Qdrant's indexing threshold (about 6,500 chunks of 384 dims) stay brute force, which
        # is faster there, so on a small store this returns at once.
        shard = self._require()
        with self._lock:
            return bool(shard.optimize())

    def count(self) -> int:
        import qdrant_edge as qe

        if self._shard is None:
            return 0
        return int(self._shard.count(qe.CountRequest()))

    def close(self) -> None:
        if self._shard is not None:
            with self._lock:
                self._shard.flush()
                self._shard.close()
            self._shard = None


class ServerStore:
    """A Qdrant server or cluster through qdrant-client (`url=`; `path=` runs the same API
    embedded, which the tests use in place of a server that cannot be installed here)."""

    def __init__(
        self,
        collection: str,
        url: str | None = None,
        api_key: str | None = None,
        path: Path | None = None,
        timeout_s: float = 10.0,
        settings: StoreSettings | None = None,
    ) -> None:
        from qdrant_client import QdrantClient

        self.collection = collection
        self.where = url or str(path)
        # The same index, quantization and search settings as the embedded store: applied to
        # a collection this store creates (an existing one keeps its own) and to searches.
        self.settings = settings or StoreSettings()
        if url is not None:
            self._client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))
        elif path is not None:
            self._client = QdrantClient(path=str(path))
        else:
            raise StoreError("a server store needs store.url (or a path for embedded mode)")
        self._bm25 = _Bm25()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConnectionError, OSError) as exc:
            raise StoreError(
                f"Qdrant at {self.where} is unreachable while trying to {what} ({exc}); "
                "start the server or fix store.url in the profile"
            ) from exc

    def ensure_collection(self, info: CollectionInfo) -> None:
        from qdrant_client import models

        if self._call("check the collection", self._client.collection_exists, self.collection):
            stored = self._info()
            if stored is not None:
                _check_info(stored, info, f"{self.where}/{self.collection}")
            return
        self._call(
            "create the collection",
            self._client.create_collection,
            self.collection,
            vectors_config={
                DENSE: models.VectorParams(
                    size=info.dimension,
                    distance=models.Distance.COSINE,
                    on_disk=self.settings.vectors_on_disk,
                )
            },
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            hnsw_config=models.HnswConfigDiff(
                m=self.settings.hnsw_m, ef_construct=self.settings.hnsw_ef_construct
            ),
            quantization_config=self._quantization_config(),
            metadata=asdict(info),
        )
        for field in INDEXED_FIELDS:
            self._client.create_payload_index(
                self.collection, field, models.PayloadSchemaType.KEYWORD
            )

    def _quantization_config(self) -> Any:
        from qdrant_client import models

        if self.settings.quantization != "int8":
            return None
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=INT8_QUANTILE, always_ram=True
            )
        )

    def _search_params(self, limit: int) -> Any:
        from qdrant_client import models

        tuning = self.settings
        quantization = (
            models.QuantizationSearchParams(
                rescore=True, oversampling=tuning.quantization_oversampling
            )
            if tuning.quantization == "int8"
            else None
        )
        return models.SearchParams(hnsw_ef=max(tuning.hnsw_ef, limit), quantization=quantization)

    def _info(self) -> CollectionInfo | None:
        described = self._client.get_collection(self.collection)
        meta = getattr(described.config, "metadata", None) or {}
        if "embedder" not in meta:
            return None
        return CollectionInfo(embedder=meta["embedder"], dimension=int(meta["dimension"]))

    def open_existing(self) -> CollectionInfo | None:
        if not self._call("check the collection", self._client.collection_exists, self.collection):
            return None
        return self._info()

    def upsert(
        self,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        chunk_counts: Sequence[int],
        owner: str = SHARED,
    ) -> None:
        from qdrant_client import models

        points = []
        for chunk, vector, count in zip(chunks, dense, chunk_counts, strict=True):
            indices, values = self._bm25.document(chunk.text)
            points.append(
                models.PointStruct(
                    id=chunk.id,
                    vector={
                        DENSE: vector.tolist(),
                        SPARSE: models.SparseVector(indices=indices, values=values),
                    },
                    payload=_payload(chunk, count, owner),
                )
            )
        self._call("upsert", self._client.upsert, self.collection, points=points, wait=True)

    def delete_file(
        self, path: str, keep_file_hash: str | None = None, owner: str = SHARED
    ) -> None:
        from qdrant_client import models

        must_not: list[Any] | None = (
            [models.FieldCondition(key="file_hash", match=models.MatchValue(value=keep_file_hash))]
            if keep_file_hash is not None
            else None
        )
        selector = models.Filter(
            must=[
                models.FieldCondition(key="path", match=models.MatchValue(value=path)),
                _server_owner_filter([owner]),
            ],
            must_not=must_not,
        )
        self._call(
            "delete", self._client.delete, self.collection, points_selector=selector, wait=True
        )

    def _scroll(self) -> Iterable[tuple[Any, dict[str, Any]]]:
        if not self._client.collection_exists(self.collection):
            return
        offset = None
        while True:
            records, offset = self._call(
                "scroll",
                self._client.scroll,
                self.collection,
                limit=512,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            for record in records:
                yield record.id, record.payload or {}
            if offset is None:
                return

    def file_states(self, owner: str = SHARED) -> dict[str, FileState]:
        return _file_states(self._scroll(), owner)

    def scroll_chunks(self) -> Iterable[Chunk]:
        for pid, payload in self._scroll():
            yield _chunk(pid, payload)

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        text: str | None = None,
        owners: Sequence[str] | None = None,
    ) -> list[Hit]:
        from qdrant_client import models

        scope = _server_owner_filter(owners) if owners is not None else None
        params = self._search_params(limit)
        if text is None:
            query: dict[str, Any] = {
                "query": vector.tolist(),
                "using": DENSE,
                "search_params": params,
            }
        else:
            indices, values = self._bm25.query(text)
            query = {
                "prefetch": [
                    models.Prefetch(
                        query=vector.tolist(), using=DENSE, limit=limit, filter=scope, params=params
                    ),
                    models.Prefetch(
                        query=models.SparseVector(indices=indices, values=values),
                        using=SPARSE,
                        limit=limit,
                        filter=scope,
                    ),
                ],
                "query": models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
            }
        response = self._call(
            "search",
            self._client.query_points,
            self.collection,
            limit=limit,
            with_payload=True,
            query_filter=scope,
            **query,
        )
        return ranked([Hit(_chunk(p.id, p.payload or {}), float(p.score)) for p in response.points])

    def optimize(self) -> bool:
        # A Qdrant server runs its optimizers in the background; nothing to ask for.
        return False

    def count(self) -> int:
        if not self._client.collection_exists(self.collection):
            return 0
        return int(self._client.count(self.collection, exact=True).count)

    def close(self) -> None:
        self._client.close()


def _server_owner_filter(owners: Sequence[str]) -> Any:
    from qdrant_client import models

    either: list[Any] = [models.FieldCondition(key=OWNER, match=models.MatchAny(any=list(owners)))]
    if SHARED in owners:
        either.append(models.IsEmptyCondition(is_empty=models.PayloadField(key=OWNER)))
    return models.Filter(should=either)


def _file_states(records: Iterable[tuple[Any, dict[str, Any]]], owner: str) -> dict[str, FileState]:
    hashes: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    expected: dict[str, int] = {}
    for _, payload in records:
        if owner_of(payload) != owner:
            continue
        path = payload["path"]
        hashes.setdefault(path, set()).add(payload.get("file_hash", ""))
        counts[path] = counts.get(path, 0) + 1
        expected[path] = int(payload.get("chunk_count", 0))
    return {
        path: FileState(frozenset(hashes[path]), counts[path], expected[path]) for path in hashes
    }
