"""Sentence-transformers embeddings for chunks and queries.

The model loads on first use, not when the embedder is built: an ingest run over an unchanged
folder never embeds, and spares importing torch and sentence-transformers and loading the model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.settings import Device, Precision

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


# Whose requests a kept question vector may serve. A question already embedded comes back in
# microseconds and stage timings reach API clients: kept across users, one user could tell
# that another had asked it. The pipeline names the asker for the stages of its request.
QUESTION_SCOPE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "question_scope", default=None
)


@contextlib.contextmanager
def questions_of(scope: str | None) -> Iterator[None]:
    """Question vectors embedded inside (threads started inside too) are kept for `scope`."""
    token = QUESTION_SCOPE.set(scope)
    try:
        yield
    finally:
        QUESTION_SCOPE.reset(token)


class EmbedderUnavailable(RuntimeError):
    """The embedder's model did not load; the message names it and where it was loaded from."""


class SentenceEmbedder:
    def __init__(
        self,
        name: str,
        path: Path,
        query_instruction: str = "",
        batch_size: int = 32,
        max_seq_length: int = 256,
        device: Device = "auto",
        precision: Precision = "auto",
    ) -> None:
        self.name = name
        self.path = path
        self.query_instruction = query_instruction
        self.batch_size = batch_size
        self._max_seq_length = max_seq_length
        self._device_setting = device
        self._precision = precision
        self._loaded: SentenceTransformer | None = None
        self._load_lock = threading.Lock()
        # Questions being embedded right now, so that a second caller of the same question
        # (the injection head beside retrieval, in one request) waits for the first.
        self._embedding_now: dict[
            tuple[str | None, str], concurrent.futures.Future[np.ndarray]
        ] = {}
        self._embedding_now_lock = threading.Lock()
        # The store checks a collection against the embedder's dimension before anything is
        # embedded: read from the model's files where they say it plainly, so that check
        # loads nothing (and the loaded model must agree, see `_load_model`).
        self._dimension: int | None = dimension_on_disk(path)

    @functools.cached_property
    def device(self) -> str:
        from rag.precision import resolve_device

        return resolve_device(self._device_setting)

    @functools.cached_property
    def document_dtype(self) -> torch.dtype | None:
        from rag.precision import batch_dtype

        # Document batches only: one query is too small for bfloat16 to pay for its casts
        # (MiniLM, one question: 8.1 ms in bfloat16 autocast vs 5.7 ms in float32).
        return batch_dtype(self._precision, self.device)

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self.load()
        assert self._dimension is not None
        return self._dimension

    def load(self) -> SentenceTransformer:
        """The model, loaded on the first call (once, whichever thread asks first)."""
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is None:
                self._loaded = self._load_model()
        return self._loaded

    def _load_model(self) -> SentenceTransformer:
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        except MemoryError:
            raise
        except Exception as exc:
            # Raised where the model is first needed (possibly mid-run), so it says which one.
            raise EmbedderUnavailable(
                f"embedder {self.name} at {self.path} did not load: {exc}"
            ) from exc
        model.max_seq_length = self._max_seq_length
        dimension = model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"embedder {self.name} at {self.path} does not report its dimension")
        if self._dimension not in (None, dimension):
            raise EmbedderUnavailable(
                f"embedder {self.name} at {self.path} embeds in {dimension} dimensions, but its "
                f"files said {self._dimension}: a guardrag bug (rag/embedder.py)"
            )
        self._dimension = int(dimension)
        return model

    @property
    def _model(self) -> SentenceTransformer:
        return self.load()

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self._model.tokenizer

    def embed_documents(
        self,
        texts: Sequence[str],
        on_progress: Callable[[int], None] | None = None,
        batches_per_report: int = 8,
        token_counts: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Unit vectors for `texts`, in order. `on_progress` hears how many are done after
        every `batches_per_report` batches. `token_counts`, when the caller knows them (ingest
        does, from chunking), spare tokenizing every text once more just to sort them."""
        from rag.precision import autocast_batches

        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return vectors
        # encode() sorts a call's texts by characters so each batch pads little; sorting by
        # tokens pads less (10 % fewer padded tokens on the development chunks, make
        # bench-ingest). One encode() call a batch keeps these batches as they are.
        if token_counts is None:
            ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
            token_counts = [len(i) for i in ids["input_ids"]]
        elif len(token_counts) != len(texts):
            raise ValueError(f"{len(token_counts)} token counts for {len(texts)} texts")
        lengths = token_counts
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        # One text (the router embeds each question this way) is quicker in float32.
        dtype = self.document_dtype if len(texts) > 1 else None
        with autocast_batches(self.device, dtype):
            for number, at in enumerate(range(0, len(order), self.batch_size), start=1):
                batch = order[at : at + self.batch_size]
                vectors[batch] = self._encode([texts[i] for i in batch])
                last = at + len(batch) == len(order)
                if on_progress is not None and (number % batches_per_report == 0 or last):
                    on_progress(at + len(batch))
        return vectors

    def encode_bare(self, texts: list[str]) -> np.ndarray:
        """One plain `encode` call in the precision documents get: the embedder's raw speed,
        which `make bench-ingest` measures ingest against."""
        from rag.precision import autocast_batches

        with autocast_batches(self.device, self.document_dtype):
            return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        # Under autocast the pooled vectors come back float32 already; this is a no-op then.
        return vectors.astype(np.float32, copy=False)

    def embed_query(self, text: str) -> np.ndarray:
        # A request embeds its question for retrieval, then the router and the semantic
        # cache need the same vector: the last few are kept rather than computed again. The
        # input guards run beside retrieval, so two threads can ask for the same question at
        # once: the one that asks second waits for the first rather than embedding it again.
        # Both are kept per asker (QUESTION_SCOPE): never shared between users.
        key = (QUESTION_SCOPE.get(), text)
        with self._embedding_now_lock:
            pending = self._embedding_now.get(key)
            first = pending is None
            if first:
                pending = self._embedding_now[key] = concurrent.futures.Future()
        assert pending is not None
        if not first:
            return pending.result()
        try:
            vector = self._embed_query_cached(*key)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        else:
            pending.set_result(vector)
            return vector
        finally:
            with self._embedding_now_lock:
                del self._embedding_now[key]

    @property
    def questions_embedded(self) -> int:
        """Questions the model embedded so far (not served from kept vectors)."""
        return self._embed_query_cached.cache_info().misses

    def forget_queries(self) -> None:
        """Drops the kept question vectors (benchmarks: the next question is embedded)."""
        self._embed_query_cached.cache_clear()

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one embedder per process, never freed
    def _embed_query_cached(self, scope: str | None, text: str) -> np.ndarray:
        del scope  # part of the cache's key only
        # bge-style models want the instruction on queries only, never on passages.
        vector: np.ndarray = self._model.encode(
            [self.query_instruction + text],
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )[0]
        vector.setflags(write=False)  # shared between callers: nobody may change it
        return vector


def dimension_on_disk(path: Path) -> int | None:
    """The dimension a sentence-transformers model folder embeds in, read from its files when
    its modules are the usual pooling (one mode), optional dense layers and normalisation;
    None for anything else, which then loads the model to ask it."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        for module in reversed(modules):
            kind = str(module["type"]).rsplit(".", 1)[-1]
            if kind == "Normalize":
                continue
            config = _module_config(path / str(module.get("path", "")))
            if kind == "Dense":
                return int(config["out_features"])
            if kind == "Pooling":
                return _pooled_dimension(config)
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def _module_config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'} is not an object")
    return config


def _pooled_dimension(config: dict[str, Any]) -> int | None:
    width: Any = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    mode = config.get("pooling_mode")
    if mode is None:
        # The older layout: one flag per mode; two modes concatenate (twice the width).
        modes = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
        return int(width) if len(modes) <= 1 else None
    return int(width) if isinstance(mode, str) or len(mode) == 1 else None
