"""Sentence-transformers embeddings for chunks and queries."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rag.precision import autocast_batches, batch_dtype, resolve_device
from rag.settings import Device, Precision


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
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.query_instruction = query_instruction
        self.batch_size = batch_size
        self.device = resolve_device(device)
        # Document batches only: one query is too small for bfloat16 to pay for its casts
        # (MiniLM, one question: 8.1 ms in bfloat16 autocast vs 5.7 ms in float32).
        self.document_dtype = batch_dtype(precision, self.device)
        self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self._model.max_seq_length = max_seq_length
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"embedder {name} at {path} does not report its dimension")
        self.dimension: int = int(dimension)

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
        # cache need the same vector: the last few are kept rather than computed again.
        return self._embed_query_cached(text)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one embedder per process, never freed
    def _embed_query_cached(self, text: str) -> np.ndarray:
        # bge-style models want the instruction on queries only, never on passages.
        vector: np.ndarray = self._model.encode(
            [self.query_instruction + text],
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )[0]
        vector.setflags(write=False)  # shared between callers: nobody may change it
        return vector
