"""Learned injection layer: a logistic regression over hashed character and word n-grams of
the normalised text plus the rule layer's evidence, trained only on the project's own banks
(guardrails/train_injection.py).

Hashing needs no vocabulary, so the model is its weights alone (package data, under 1 MB) and
scoring a question costs about a millisecond: no model, no embedder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from guardrails.injection_exemplars import EXEMPLARS_DIR

if TYPE_CHECKING:
    # scikit-learn and SciPy take most of a second to import: only when a text is scored.
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import HashingVectorizer

WEIGHTS_PATH = EXEMPLARS_DIR / "learned_injection.npz"
# A chunk longer than this many words is also scored in windows, so one planted sentence is
# not diluted by hundreds of ordinary ones (questions and ingest chunks are shorter).
LONG_TEXT_WORDS = 300
WINDOW_WORDS = 120


# What the rule layer found in a text: its combined score and the categories that matched.
RuleEvidence = tuple[float, tuple[str, ...]]


@dataclass(frozen=True)
class Featurizer:
    """Hashed n-gram counts: character n-grams (within words) catch spelling variants and other
    languages, word n-grams catch phrasing; then the rules' score and one flag per rule
    category, so the model learns how far to trust each family of rules. Stateless, so
    training and serving agree."""

    rule_categories: tuple[str, ...]
    n_features: int = 2**17
    char_ngrams: tuple[int, int] = (2, 5)
    word_ngrams: tuple[int, int] = (1, 2)

    @property
    def width(self) -> int:
        return 2 * self.n_features + 1 + len(self.rule_categories)

    def _vectorizers(self) -> tuple[HashingVectorizer, HashingVectorizer]:
        from sklearn.feature_extraction.text import HashingVectorizer

        common = {"n_features": self.n_features, "alternate_sign": False, "norm": "l2"}
        char = HashingVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, **common)
        word = HashingVectorizer(analyzer="word", ngram_range=self.word_ngrams, **common)
        return char, word

    def rule_features(self, evidence: RuleEvidence) -> list[float]:
        score, categories = evidence
        return [score, *(1.0 if c in categories else 0.0 for c in self.rule_categories)]

    def transform(self, texts: Sequence[str], evidence: Sequence[RuleEvidence]) -> csr_matrix:
        """One row per text; `evidence[i]` is what the rules found in the text `texts[i]`
        comes from (a window of a long text carries its whole text's evidence)."""
        from scipy.sparse import csr_matrix, hstack

        char, word = self._vectorizers()
        rules = csr_matrix(np.array([self.rule_features(e) for e in evidence], dtype=np.float64))
        return hstack([char.transform(texts), word.transform(texts), rules]).tocsr()


def pieces_of(views: Sequence[str]) -> list[str]:
    """Each view whole, and a long view also in overlapping windows of words."""
    out: list[str] = []
    for view in views:
        out.append(view)
        words = view.split()
        if len(words) > LONG_TEXT_WORDS:
            step = WINDOW_WORDS // 2
            out += [" ".join(words[i : i + WINDOW_WORDS]) for i in range(0, len(words), step)]
    return out


@dataclass(frozen=True)
class LearnedWeights:
    featurizer: Featurizer
    # Sparse weights: only hashed features seen in training have any.
    indices: np.ndarray
    values: np.ndarray
    intercept: float
    # What the training run chose and measured, kept beside the weights (see train_injection).
    meta: dict[str, object]

    def dense(self) -> np.ndarray:
        weights = np.zeros(self.featurizer.width, dtype=np.float32)
        weights[self.indices] = self.values
        return weights

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            indices=self.indices.astype(np.int32),
            values=self.values.astype(np.float32),
            intercept=np.float32(self.intercept),
            featurizer=json.dumps(
                {
                    "rule_categories": self.featurizer.rule_categories,
                    "n_features": self.featurizer.n_features,
                    "char_ngrams": self.featurizer.char_ngrams,
                    "word_ngrams": self.featurizer.word_ngrams,
                }
            ),
            meta=json.dumps(self.meta),
        )

    @classmethod
    def load(cls, path: Path = WEIGHTS_PATH) -> LearnedWeights:
        if not path.exists():
            raise FileNotFoundError(
                f"learned injection weights missing at {path}; "
                "run `python -m guardrails.train_injection` to build them"
            )
        with np.load(path) as data:
            spec = json.loads(str(data["featurizer"]))
            featurizer = Featurizer(
                tuple(spec["rule_categories"]),
                spec["n_features"],
                tuple(spec["char_ngrams"]),
                tuple(spec["word_ngrams"]),
            )
            return cls(
                featurizer,
                data["indices"],
                data["values"],
                float(data["intercept"]),
                json.loads(str(data["meta"])),
            )


class LearnedInjectionScorer:
    """Scores 0..1: the model's attack probability, the highest over a text's pieces."""

    name = "learned"

    def __init__(self, weights: LearnedWeights) -> None:
        self.featurizer = weights.featurizer
        self.meta = weights.meta
        self._weights = weights.dense()
        self._intercept = weights.intercept

    @classmethod
    def from_package(cls) -> LearnedInjectionScorer:
        return cls(LearnedWeights.load())

    def probabilities(self, texts: Sequence[str], evidence: Sequence[RuleEvidence]) -> np.ndarray:
        logits = self.featurizer.transform(texts, evidence) @ self._weights + self._intercept
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)

    def score(self, views: Sequence[str], rules: RuleEvidence) -> float:
        """The highest attack probability over the pieces of a text's views, given what the
        rule layer found in those views."""
        pieces = pieces_of(views)
        return round(float(self.probabilities(pieces, [rules] * len(pieces)).max()), 4)
