"""Cross-encoder reranking of retrieved candidates (bge-reranker family)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rag.schema import Hit
from rag.settings import Device, Precision


class CrossEncoderReranker:
    def __init__(
        self,
        name: str,
        path: Path,
        min_score: float | None = None,
        device: Device = "auto",
        precision: Precision = "float32",
    ) -> None:
        from sentence_transformers import CrossEncoder

        from rag.precision import batch_dtype, resolve_device

        self.name = name
        self.min_score = min_score
        self.device = resolve_device(device)
        self.batch_dtype = batch_dtype(precision, self.device)
        self._model = CrossEncoder(str(path), device=self.device, local_files_only=True)

    def rerank(self, question: str, hits: Sequence[Hit], top_k: int) -> list[Hit]:
        from rag.precision import autocast_batches

        if not hits:
            return []
        with autocast_batches(self.device, self.batch_dtype):
            scores = self._model.predict(
                [(question, h.chunk.text) for h in hits], show_progress_bar=False
            )
        rescored = [replace(h, rerank_score=float(s)) for h, s in zip(hits, scores, strict=True)]
        rescored.sort(key=lambda h: h.rerank_score or 0.0, reverse=True)
        if self.min_score is not None:
            rescored = [h for h in rescored if (h.rerank_score or 0.0) >= self.min_score]
        return rescored[:top_k]
