"""Learned injection layer: a logistic regression over hashed character and word n-grams of
the normalised text, trained only on the project's own banks (guardrails/train_injection.py).

Hashing needs no vocabulary, so the model is its weights alone (package data, under 1 MB) and
scoring a question costs well under a millisecond: no model, no embedder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import HashingVectorizer

from guardrails.injection_exemplars import EXEMPLARS_DIR

WEIGHTS_PATH = EXEMPLARS_DIR / "learned_injection.npz"
# A chunk longer than this many words is also scored in windows, so one planted sentence is
# not diluted by hundreds of ordinary ones (questions and ingest chunks are shorter).
LONG_TEXT_WORDS = 300
WINDOW_WORDS = 120


@dataclass(frozen=True)
class Featurizer:
    """Hashed n-gram counts: character n-grams (within words) catch spelling variants and other
    languages, word n-grams catch phrasing. Stateless, so training and serving agree."""

    n_features: int = 2**17
    char_ngrams: tuple[int, int] = (2, 5)
    word_ngrams: tuple[int, int] = (1, 2)

    def _vectorizers(self) -> tuple[HashingVectorizer, HashingVectorizer]:
        common = {"n_features": self.n_features, "alternate_sign": False, "norm": "l2"}
        char = HashingVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, **common)
        word = HashingVectorizer(analyzer="word", ngram_range=self.word_ngrams, **common)
        return char, word

    def transform(self, texts: Sequence[str]) -> csr_matrix:
        char, word = self._vectorizers()
        return hstack([char.transform(texts), word.transform(texts)]).tocsr()


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
        weights = np.zeros(2 * self.featurizer.n_features, dtype=np.float32)
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
                spec["n_features"], tuple(spec["char_ngrams"]), tuple(spec["word_ngrams"])
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

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        logits = self.featurizer.transform(texts) @ self._weights + self._intercept
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)

    def score(self, views: Sequence[str]) -> float:
        return round(float(self.probabilities(pieces_of(views)).max()), 4)
