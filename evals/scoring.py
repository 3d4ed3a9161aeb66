"""The metric formulas every suite shares: ranking (hit@k, recall@k, MRR, nDCG), detection
rates and ROC, percentiles, and answer matching; pure functions, no models."""

from __future__ import annotations

import math
import re
import statistics
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz

# ---------------------------------------------------------------- ranking


@dataclass(frozen=True)
class RankedQuestion:
    """One question's retrieval outcome, the same for guardrag and for the baseline.

    `doc_rank`: 1-based rank of the gold document among the distinct documents of the ranked
    chunks (None: not retrieved). `answer_rank`: 1-based rank of the first chunk that comes
    from the gold document and contains a gold answer string (None: none does).
    """

    doc_rank: int | None
    answer_rank: int | None
    ms: float


def first_rank(items: Sequence[object], wanted: object) -> int | None:
    return items.index(wanted) + 1 if wanted in items else None


def hit_at(ranks: Sequence[int | None], k: int) -> float:
    """Share of questions whose relevant item is ranked k or better."""
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    return statistics.fmean(1 / r if r else 0.0 for r in ranks) if ranks else 0.0


def ndcg_at(ranks: Sequence[int | None], k: int) -> float:
    """nDCG@k with one relevant item per question (binary gain): the ideal DCG is 1, so each
    question scores 1/log2(rank + 1) when ranked k or better, else 0."""
    if not ranks:
        return 0.0
    return statistics.fmean(
        1 / math.log2(r + 1) if r is not None and r <= k else 0.0 for r in ranks
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation (numpy's default)."""
    return float(np.percentile(values, q)) if len(values) else 0.0


# ---------------------------------------------------------------- detection


@dataclass(frozen=True)
class Rates:
    tpr: float
    fpr: float


def rates(flags_attack: Sequence[bool], flags_benign: Sequence[bool]) -> Rates:
    tpr = sum(flags_attack) / len(flags_attack) if flags_attack else 0.0
    fpr = sum(flags_benign) / len(flags_benign) if flags_benign else 0.0
    return Rates(tpr, fpr)


@dataclass(frozen=True)
class Curve:
    """A ROC curve: false- and true-positive rates at each distinct score threshold."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]
    auc: float


def roc(scores: Sequence[float], is_positive: Sequence[bool]) -> Curve:
    """ROC from a detector's scores, flagging `score >= threshold`. scikit-learn computes it
    when both classes are present; otherwise the curve is undefined and AUC is NaN."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(is_positive, dtype=bool)
    if labels.all() or not labels.any():
        return Curve((), (), (), float("nan"))
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(scores, dtype=float))
    # The first threshold is +inf (flag nothing); JSON has no infinity, so cap it above 1.
    capped = np.minimum(thresholds, max(1.0, float(np.max(scores))) + 1e-6)
    return Curve(
        tuple(float(x) for x in fpr),
        tuple(float(x) for x in tpr),
        tuple(float(x) for x in capped),
        float(roc_auc_score(labels, np.asarray(scores, dtype=float))),
    )


def sweep(
    scores: Sequence[float], is_positive: Sequence[bool], thresholds: Sequence[float]
) -> list[tuple[float, Rates]]:
    """TPR and FPR at each threshold, flagging `score >= threshold`."""
    attack = [s for s, p in zip(scores, is_positive, strict=True) if p]
    benign = [s for s, p in zip(scores, is_positive, strict=True) if not p]
    return [(t, rates([s >= t for s in attack], [s >= t for s in benign])) for t in thresholds]


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    f1: float


def precision_recall(true_pos: int, predicted: int, gold_found: int, gold: int) -> PrecisionRecall:
    """Precision over predictions, recall over gold items; F1 their harmonic mean."""
    precision = true_pos / predicted if predicted else 0.0
    recall = gold_found / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PrecisionRecall(precision, recall, f1)


# ---------------------------------------------------------------- answers

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """A gold answer appears in the text, word for word after normalisation."""
    seen = f" {normalise_answer(text)} "
    return any(f" {normalise_answer(a)} " in seen for a in answers if normalise_answer(a))


def fuzzy_answer_score(text: str, answers: Sequence[str]) -> float:
    """0-100: the best rapidfuzz partial ratio of a gold answer against the normalised text
    (the best-matching window of the text, so a long answer is not penalised for length)."""
    seen = normalise_answer(text)
    return max((fuzz.partial_ratio(normalise_answer(a), seen) for a in answers), default=0.0)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n+")


def sentences(text: str, min_chars: int = 12) -> list[str]:
    """Sentences of an answer or a passage; fragments shorter than `min_chars` (list markers,
    "[1]") carry no claim and are left out."""
    parts = (p.strip() for p in _SENTENCE_END.split(text))
    return [p for p in parts if len(p) >= min_chars]


_CITATION_MARK = re.compile(r"\[(\d{1,2})\]")


def cited_numbers(text: str) -> tuple[int, ...]:
    """The passage numbers an answer cites inline, as `[2]`, in order of first mention."""
    return tuple(dict.fromkeys(int(n) for n in _CITATION_MARK.findall(text)))
