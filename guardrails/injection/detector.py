"""The injection guard: every layer scores the text, each against its own threshold for the
use (a question, an earlier turn, a chunk at ingest), and the layers fuse into one score.

Fusion: each layer's score is rescaled so its threshold sits at 0.5 (linear on both sides),
the model layers (trained head, classifier) are averaged, since two models agreeing is
stronger evidence than either alone (issue 14: the mean of a vector head and a second model
beat both), and the verdict's score is the highest of rules, models and the optional layers.
The text is flagged when that score reaches 0.5; the reason lists each layer against its
threshold, so what decided is visible.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import numpy as np

from guardrails.injection.head import EmbeddingHead
from guardrails.injection.normalise import views_of
from guardrails.injection.rules import InjectionRules
from guardrails.injection_classifier import InjectionClassifier
from guardrails.injection_exemplars import ExemplarSimilarity
from guardrails.injection_learned import LearnedInjectionScorer
from guardrails.verdict import GuardContext, Verdict, clean, flagged, unavailable

FLAG_AT = 0.5
# Layers whose scores are averaged into one "models" score before the maximum.
MODEL_LAYERS = ("head", "classifier")


@dataclass(frozen=True)
class LayerThresholds:
    rules: float = 0.5
    semantic: float = 0.75
    classifier: float = 0.8
    # Last, so thresholds built positionally before this layer existed keep their meaning.
    learned: float = 0.9718
    # The trained head's thresholds per use; None: the ones its training run calibrated on
    # held-out benign text (guardrails/injection/train_head.py).
    head_question: float | None = None
    head_turn: float | None = None
    head_chunk: float | None = None


def use_of(checked_as: str) -> str:
    """The threshold set for what a text is: a chunk, an earlier turn of a conversation, or
    (anything else) a question."""
    if checked_as == "chunk":
        return "chunk"
    if checked_as in ("turn", "earlier_turn", "history", "assistant_turn"):
        return "turn"
    return "question"


def rescaled(score: float, threshold: float) -> float:
    """`score` mapped so that `threshold` lands on FLAG_AT, 0 on 0 and 1 on 1."""
    if threshold <= 0.0:
        return 1.0
    if score < threshold:
        return FLAG_AT * score / threshold
    if threshold >= 1.0:
        return 1.0
    return FLAG_AT + (1.0 - FLAG_AT) * (score - threshold) / (1.0 - threshold)


LayerScores = dict[str, tuple[float, tuple[str, ...]]]


def _shown(score: float) -> str:
    """Two decimals, four near 1 and at the flag point: the head's thresholds sit at 0.99+
    (0.998 shown as 1.00 read as unreachable) and 0.4999 must not read as 0.50."""
    return f"{score:.4f}" if score >= 0.99 or 0.49 <= score < 0.5 else f"{score:.2f}"


class InjectionDetector:
    """Rules, the trained head, the learned n-gram layer, exemplar similarity and (when on
    disk) a classifier, fused into one score per verdict."""

    name = "injection"

    def __init__(
        self,
        rules: InjectionRules,
        semantic: ExemplarSimilarity | None = None,
        classifier: InjectionClassifier | None = None,
        thresholds: LayerThresholds = LayerThresholds(),
        notes: str = "",
        learned: LearnedInjectionScorer | None = None,
        head: EmbeddingHead | None = None,
    ) -> None:
        self.rules = rules
        self.learned = learned
        self.semantic = semantic
        self.classifier = classifier
        self.head = head
        self.thresholds = thresholds
        # Layers that were asked for but could not load, said in every verdict's reason.
        self.notes = notes

    def threshold(self, layer: str, use: str = "question") -> float:
        if layer == "head":
            configured = getattr(self.thresholds, f"head_{use}", None)
            if configured is not None:
                return float(configured)
            return self.head.threshold(use) if self.head is not None else 1.0
        return float(getattr(self.thresholds, layer))

    def layer_scores(
        self,
        text: str,
        use: str = "question",
        vector: np.ndarray | None = None,
        timings: dict[str, float] | None = None,
    ) -> LayerScores:
        """Each layer's raw score and categories. `vector`: the text's embedding when the
        caller has it (ingest's chunk vectors), for the head. `timings`, when given, gets each
        layer's milliseconds (evaluation and benchmarks)."""
        clock = time.perf_counter()

        def lap(layer: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            if timings is not None:
                timings[layer] = (now - clock) * 1000
            clock = now

        views = views_of(text)
        lap("normalise")
        scores: LayerScores = {"rules": self.rules.score(views)}
        lap("rules")
        if self.head is not None:
            scores["head"] = (self.head.score(text, vector, views), ("trained_head",))
            lap("head")
        if self.learned is not None:
            scores["learned"] = (self.learned.score(views, scores["rules"]), ("learned",))
            lap("learned")
        if self.semantic is not None:
            value, family = self.semantic.score(views)
            scores["semantic"] = (value, (f"semantic:{family}",))
            lap("semantic")
        if self.classifier is not None:
            scores["classifier"] = (self.classifier.score(views), ("classifier",))
            lap("classifier")
        return scores

    def fuse(self, scores: LayerScores, use: str = "question") -> tuple[float, tuple[str, ...]]:
        """The one score (flag at FLAG_AT) and the layers that raised it to that."""
        scaled = {layer: rescaled(v[0], self.threshold(layer, use)) for layer, v in scores.items()}
        models = [scaled[layer] for layer in MODEL_LAYERS if layer in scaled]
        parts = {layer: s for layer, s in scaled.items() if layer not in MODEL_LAYERS}
        if models:
            parts["models"] = sum(models) / len(models)
        top = max(parts.values())
        deciding = tuple(layer for layer, s in parts.items() if s >= FLAG_AT)
        # Cut, not rounded: a score just under the flag point must not read as 0.5.
        return math.floor(top * 10_000) / 10_000, deciding

    def check_sync(
        self, text: str, use: str = "question", vector: np.ndarray | None = None
    ) -> Verdict:
        started = time.perf_counter()
        try:
            scores = self.layer_scores(text, use, vector)
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            # A layer that breaks (a classifier out of memory, say) makes the verdict
            # unavailable; the policy then decides, never a silent allow.
            return unavailable(self.name, f"injection check failed: {type(exc).__name__}: {exc}")
        ms = (time.perf_counter() - started) * 1000
        fused, deciding = self.fuse(scores, use)
        summary = ", ".join(
            f"{layer} {_shown(value[0])}/{_shown(self.threshold(layer, use))}"
            for layer, value in scores.items()
        )
        reason = f"fused {_shown(fused)} ({use}): {summary}"
        reason += f"; {self.notes}" if self.notes else ""
        if not deciding:
            return clean(self.name, score=fused, reason=reason).timed(ms)
        over = [
            layer
            for layer in scores
            if layer in deciding or (layer in MODEL_LAYERS and "models" in deciding)
        ]
        categories = tuple(sorted({c for layer in over for c in scores[layer][1]}))
        return flagged(self.name, fused, categories, reason).timed(ms)

    async def check(self, text: str, context: GuardContext) -> Verdict:
        return await asyncio.to_thread(self.check_sync, text, use_of(context.checked_as))
