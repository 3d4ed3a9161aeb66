"""Guard quality on labelled sets: PII precision/recall/F1 per entity (span overlap), injection
detection rates per kind with each layer's threshold sweep and ROC, and Llama Guard's agreement
with labels where the model is present.

Data formats (JSONL), as in ../shared/eval-data:
- PII: `{"id", "text", "entities": [{"type", "start", "end", "value"}]}`
- injection: `{"id", "text", "label": "attack", "kind"}`
- benign: `{"id", "text", "label": "benign", "kind"}`
- moderation (optional): `{"id", "text", "label": "safe" | "unsafe", "question"?: "..."}`,
  an answer and the question it replies to, for the output guard

The guards measured are those the profile runs, built by the same lists a request, an
ingestion and `guard check` use (`listed_guards`); a guard without a labelled set of its own
is measured by the share of benign text it flags (`benign_flag_rates`).
Run: `python -m evals.guards DATA_DIR [--profile P]` (or `guardrag eval --suite guards`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evals.pii import pii_scores
from evals.progress import Advance
from evals.scoring import Curve, Rates, percentile, precision_recall, rates, roc, sweep
from guardrails.canary import new_canary
from guardrails.injection import FLAG_AT, InjectionDetector
from guardrails.injection.corpora import LabelledText
from guardrails.pii import PresidioPII, PseudonymVault
from guardrails.registry import PresidioGuard
from guardrails.verdict import CheckedAs, Guard, GuardContext, Verdict
from rag.compose import GUARDS, build_guards
from rag.settings import Settings, load_settings

SWEEP_THRESHOLDS = tuple(step / 20 for step in range(1, 20))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


# ---------------------------------------------------------------- the guards measured

CHECKED_KINDS: tuple[CheckedAs, ...] = ("question", "chunk", "answer")


@dataclass(frozen=True)
class ListedGuard:
    """A guard the profile runs, as the registry built it, and the kinds of text it checks."""

    guard: Guard
    checks: tuple[CheckedAs, ...]

    @property
    def name(self) -> str:
        return self.guard.name


def listed_guards(settings: Settings) -> tuple[ListedGuard, ...]:
    """Every guard the profile runs, from the lists a request, an ingestion and `guard check`
    run (rag/compose.py `build_guards`), once each in registry order: a guard registered there
    is measured here without an edit."""
    built: dict[str, Guard] = {}
    checks: dict[str, list[CheckedAs]] = defaultdict(list)
    for kind in CHECKED_KINDS:
        for policed in build_guards(settings, kind):
            built.setdefault(policed.name, policed.guard)
            checks[policed.name].append(kind)
    return tuple(ListedGuard(built[name], tuple(checks[name])) for name in GUARDS if name in built)


def off_guards(settings: Settings) -> tuple[str, ...]:
    """Registered guards the profile turns off (`guards.off`): reported, not measured."""
    return tuple(name for name in GUARDS if name in settings.guards.off)


def presidio_of(guard: Guard) -> PresidioPII | None:
    """The Presidio analyser behind the registry's PII guard (its spans are what is scored)."""
    return guard.presidio if isinstance(guard, PresidioGuard) else None


def check_context(kind: CheckedAs, settings: Settings, text: str) -> GuardContext:
    """The context a request gives a guard checking `text` as `kind`: a fresh pseudonym vault,
    and for answers the system prompt with a canary of the request's own."""
    if kind == "answer":
        return GuardContext(
            checked_as="answer",
            system_prompt=settings.generation.system_prompt,
            canary=new_canary(text),
        )
    return GuardContext(checked_as=kind, vault=PseudonymVault())


@dataclass(frozen=True)
class FlagRates:
    """One guard on benign text of one kind: the share it flagged (each of those a false
    positive), the rows it could not judge, and its latency."""

    rows: int
    flagged: int
    unjudged: int
    p50_ms: float
    p95_ms: float
    # The first reason the guard gave for a row it could not judge.
    unavailable_reason: str = ""

    @property
    def fpr(self) -> float:
        judged = self.rows - self.unjudged
        return self.flagged / judged if judged else 0.0


def benign_flag_rates(
    guard: Guard,
    kind: CheckedAs,
    texts: Sequence[str],
    settings: Settings,
    advance: Advance | None = None,
) -> FlagRates:
    """The guard's own verdict (before any policy) on each benign text, checked as `kind`."""

    async def check_all() -> list[tuple[Verdict, float]]:
        judged = []
        for text in texts:
            started = time.perf_counter()
            verdict = await guard.check(text, check_context(kind, settings, text))
            judged.append((verdict, (time.perf_counter() - started) * 1000))
            if advance is not None:
                advance()
        return judged

    judged = asyncio.run(check_all())
    unjudged = [v.reason for v, _ in judged if v.outcome == "unavailable"]
    times = [ms for _, ms in judged] or [0.0]
    return FlagRates(
        len(judged),
        sum(1 for v, _ in judged if v.flagged),
        len(unjudged),
        round(percentile(times, 50), 2),
        round(percentile(times, 95), 2),
        unjudged[0] if unjudged else "",
    )


# ---------------------------------------------------------------- injection


@dataclass(frozen=True)
class LayerCurve:
    layer: str
    threshold: float
    roc: Curve
    sweep: tuple[tuple[float, Rates], ...]


# A kind (or source) and the rate at which a decision flags it: "tpr" for attacks, "fpr" for
# benign text, with the number of rows.
KindRates = dict[str, tuple[str, float, int]]
# What each layer and the fusion ("fused") scored: ROC, sweep and per-kind rates share them.
FUSED = "fused"


@dataclass(frozen=True)
class InjectionScores:
    decision: Rates
    attacks: int
    benign: int
    # The fused verdict's rates per kind.
    by_kind: KindRates
    # Each layer's and the fusion's score swept over thresholds, with its ROC.
    layers: tuple[LayerCurve, ...]
    notes: str
    # Each layer alone at its own threshold for the use, and the fusion, per kind.
    layer_by_kind: dict[str, KindRates] = field(default_factory=dict)
    # Each layer's p50 and p95 milliseconds over the rows.
    latency_ms: dict[str, tuple[float, float]] = field(default_factory=dict)


def _kind_rates(flags: dict[tuple[bool, str], list[bool]]) -> KindRates:
    return {
        kind: ("tpr" if attack else "fpr", sum(v) / len(v), len(v))
        for (attack, kind), v in sorted(flags.items(), key=lambda item: (item[0][1], item[0][0]))
    }


def injection_scores(
    guard: InjectionDetector,
    attacks: Sequence[dict[str, Any]],
    benign: Sequence[dict[str, Any]],
    advance: Advance | None = None,
    use: str = "question",
    vectors: Sequence[Any] | None = None,
) -> InjectionScores:
    """The fused verdict and each layer on its own at its threshold for `use`, per kind, and
    every score swept over thresholds: the ROC says what another threshold would buy.
    `vectors[i]`, when given, is row i's embedding as ingest computes it (chunks)."""
    rows = [*attacks, *benign]
    flags: dict[str, dict[tuple[bool, str], list[bool]]] = defaultdict(lambda: defaultdict(list))
    values: dict[str, list[float]] = defaultdict(list)
    times: dict[str, list[float]] = defaultdict(list)
    is_attack: list[bool] = []
    for number, row in enumerate(rows):
        attack = row["label"] == "attack"
        timings: dict[str, float] = {}
        vector = vectors[number] if vectors is not None else None
        layer_values = guard.layer_scores(row["text"], use, vector, timings)
        fused, deciding = guard.fuse(layer_values, use)
        for layer, ms in timings.items():
            times[layer].append(ms)
        for layer, (value, _) in layer_values.items():
            values[layer].append(value)
            flags[layer][(attack, row["kind"])].append(value >= guard.threshold(layer, use))
        values[FUSED].append(fused)
        flags[FUSED][(attack, row["kind"])].append(bool(deciding))
        is_attack.append(attack)
        if advance is not None:
            advance()
    fused_flags = flags[FUSED]
    decision = rates(
        [f for (a, _), v in fused_flags.items() if a for f in v],
        [f for (a, _), v in fused_flags.items() if not a for f in v],
    )
    thresholds = {layer: guard.threshold(layer, use) for layer in values if layer != FUSED}
    thresholds[FUSED] = FLAG_AT
    layers = tuple(
        LayerCurve(
            layer,
            thresholds[layer],
            roc(layer_values, is_attack),
            tuple(sweep(layer_values, is_attack, _sweep_for(thresholds[layer]))),
        )
        for layer, layer_values in sorted(values.items())
    )
    return InjectionScores(
        decision,
        sum(is_attack),
        len(is_attack) - sum(is_attack),
        _kind_rates(fused_flags),
        layers,
        guard.notes,
        {layer: _kind_rates(layer_flags) for layer, layer_flags in sorted(flags.items())},
        {
            layer: (round(percentile(ms, 50), 2), round(percentile(ms, 95), 2))
            for layer, ms in sorted(times.items())
        },
    )


def _sweep_for(threshold: float) -> tuple[float, ...]:
    # The coarse grid, plus a fine one around the layer's own threshold (the head's sit near
    # 0.9, where a step of 0.05 hides most of the curve).
    fine = [round(threshold + step / 100, 4) for step in range(-5, 6)]
    return tuple(sorted({*SWEEP_THRESHOLDS, *(t for t in fine if 0.0 < t < 1.0)}))


@functools.cache
def head_rows(seed: int = 0) -> tuple[LabelledText, ...]:
    """Every row the injection head's training run reads, both splits (raises CorporaMissing
    without the wheels). Kept: one evaluation reads it for the held-out set and for the
    near-copy check, and the corpora and project texts take seconds to read."""
    from guardrails.injection.corpora import load_corpora
    from guardrails.injection.project_texts import project_texts

    return (*load_corpora(), *project_texts(seed))


def held_out_rows(seed: int = 0) -> list[dict[str, Any]]:
    """The held-out split of the injection head's training data (the corpora's test splits
    and the project's held-out texts), as rows of the dev sets' shape, kind = source. The
    head never trained on these rows; their benign side chose its thresholds (so the FPR here
    sits at the training run's target by construction), their attack side was never used."""
    return [
        {"text": r.text, "label": "attack" if r.attack else "benign", "kind": r.source}
        for r in head_rows(seed)
        if r.split == "held_out"
    ]


# A row is a near copy of a training text when this share of its sampled 8-character pieces
# are in that one text (a jailbreak reposted with another name or request is one).
NEAR_COPY_SHARE = 0.7
_PIECE = 8
_SAMPLE_EVERY = 4


def _pieces(text: str) -> set[int]:
    """A deterministic sample (one in four, by CRC) of the text's 8-character pieces."""
    flat = " ".join(text.lower().split())
    pieces = (flat[i : i + _PIECE].encode() for i in range(max(1, len(flat) - _PIECE + 1)))
    return {c for c in map(zlib.crc32, pieces) if c % _SAMPLE_EVERY == 0}


def near_copies(texts: Sequence[str], training: Sequence[str]) -> list[int]:
    """Indexes of `texts` that a training text contains almost whole: measured on, they
    would say how well the head remembers, not how it generalises."""
    index: dict[int, list[int]] = defaultdict(list)
    exact = {" ".join(t.lower().split()) for t in training}
    for number, text in enumerate(training):
        for piece in _pieces(text):
            index[piece].append(number)
    found = []
    for number, text in enumerate(texts):
        pieces = _pieces(text)
        if " ".join(text.lower().split()) in exact:
            found.append(number)
            continue
        if len(pieces) < 8:  # too short to tell a copy from shared phrasing
            continue
        shared: dict[int, int] = defaultdict(int)
        for piece in pieces:
            for holder in index.get(piece, ()):
                shared[holder] += 1
        if shared and max(shared.values()) >= NEAR_COPY_SHARE * len(pieces):
            found.append(number)
    return found


def head_training_texts(seed: int = 0) -> list[str]:
    """The texts the injection head trains on (raises CorporaMissing without the wheels)."""
    return [r.text for r in head_rows(seed) if r.split == "train"]


def document_chunks(
    folders: Sequence[Path], embedder: Any, limit: int | None = None
) -> tuple[list[dict[str, Any]], Any]:
    """The chunks of the documents in `folders` (at most `limit`, evenly spaced), cut and
    embedded as ingest does (its readers, chunker and heading-prefixed vectors), as benign rows
    with kind = folder name."""
    from ingest.chunking import chunk_document
    from ingest.readers import READERS, ReadError, read_document

    rows: list[dict[str, Any]] = []
    embedded: list[str] = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in READERS):
            try:
                document = read_document(path)
            except ReadError:
                continue
            pieces = chunk_document(
                document.text, embedder.tokenizer, 256, 32, markdown=document.markdown
            )
            for piece in pieces:
                rows.append(
                    {"text": piece.text, "label": "benign", "kind": folder.name, "path": str(path)}
                )
                embedded.append(f"{piece.section}\n{piece.text}" if piece.section else piece.text)
    if limit is not None and limit < len(rows):
        keep = [round(i * (len(rows) - 1) / max(limit - 1, 1)) for i in range(limit)]
        rows, embedded = [rows[i] for i in keep], [embedded[i] for i in keep]
    return rows, embedder.embed_documents(embedded)


def injection_report(scores: InjectionScores) -> dict[str, Any]:
    """The scores as plain data for a suite's details and for printing."""
    return {
        "tpr": scores.decision.tpr,
        "fpr": scores.decision.fpr,
        "attacks": scores.attacks,
        "benign": scores.benign,
        "notes": scores.notes,
        "by_kind": {k: list(v) for k, v in scores.by_kind.items()},
        "layer_by_kind": {
            layer: {k: [name, round(value, 4), n] for k, (name, value, n) in kinds.items()}
            for layer, kinds in scores.layer_by_kind.items()
        },
        "latency_ms": {k: {"p50": v[0], "p95": v[1]} for k, v in scores.latency_ms.items()},
        "layers": [
            {
                "layer": layer.layer,
                "threshold": layer.threshold,
                "roc": {"fpr": layer.roc.fpr, "tpr": layer.roc.tpr, "auc": layer.roc.auc},
                "sweep": [{"threshold": t, "tpr": r.tpr, "fpr": r.fpr} for t, r in layer.sweep],
            }
            for layer in scores.layers
        ],
    }


def dev_metrics_into_card(settings: Any, folder: Path, data: Path) -> dict[str, Any]:
    """The freshly trained head's guard measured on the development sets (as questions) and
    written into its model card: reported there, never used to train or calibrate."""
    from guardrails.injection import HeadWeights
    from guardrails.injection.train_head import write_card

    # Built by the registry's own entry: the card describes the detector whether or not the
    # profile runs it.
    detector = GUARDS["injection"].build(settings)
    if not isinstance(detector, InjectionDetector):
        raise TypeError(f"GUARDS['injection'] builds {type(detector).__name__}, not a detector")
    scores = injection_scores(
        detector,
        read_jsonl(data / "injection_dev.jsonl"),
        read_jsonl(data / "benign_dev.jsonl"),
    )
    auc = {layer.layer: round(layer.roc.auc, 4) for layer in scores.layers}
    dev = {
        layer: {"auc": auc.get(layer), **{k: round(v, 4) for k, (_, v, _) in kinds.items()}}
        for layer, kinds in scores.layer_by_kind.items()
    }
    weights = HeadWeights.load(folder)
    card = {**weights.card, "dev": {"set": str(data), "tpr_by_kind_fpr_by_benign_kind": dev}}
    updated = replace(weights, card=card)
    updated.save(folder)
    write_card(folder, updated)
    return dev


# ---------------------------------------------------------------- Llama Guard


@dataclass(frozen=True)
class ModerationAgreement:
    rows: int
    agreement: float
    unsafe_precision: float
    unsafe_recall: float
    # Rows the guard could not judge (unavailable verdicts) count as disagreement.
    unjudged: int


def llama_guard_agreement(
    guard: Guard, rows: Sequence[dict[str, Any]], advance: Advance | None = None
) -> ModerationAgreement:
    async def judge_all() -> list[tuple[bool, bool | None]]:
        judged = []
        for row in rows:
            verdict = await guard.check(
                row["text"], GuardContext(checked_as="answer", question=row.get("question", ""))
            )
            said = None if verdict.outcome == "unavailable" else verdict.flagged
            judged.append((row["label"] == "unsafe", said))
            if advance is not None:
                advance()
        return judged

    judged = asyncio.run(judge_all())
    agree = sum(1 for gold, said in judged if said is not None and said == gold)
    pr = precision_recall(
        sum(1 for gold, said in judged if gold and said),
        sum(1 for _, said in judged if said),
        sum(1 for gold, said in judged if gold and said),
        sum(1 for gold, _ in judged if gold),
    )
    return ModerationAgreement(
        rows=len(judged),
        agreement=agree / len(judged) if judged else 0.0,
        unsafe_precision=pr.precision,
        unsafe_recall=pr.recall,
        unjudged=sum(1 for _, said in judged if said is None),
    )


def main(argv: list[str]) -> None:
    data = Path(argv[0]) if argv else Path("../shared/eval-data")
    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(profile, data_dir=Path(data_dir))
        guards = {g.name: g.guard for g in listed_guards(settings)}
        presidio = presidio_of(guards["pii"]) if "pii" in guards else None
        if presidio is not None:
            pii = pii_scores(presidio, read_jsonl(data / "pii_dev.jsonl"))
            print(json.dumps({"pii": pii}, indent=1))
        detector = guards.get("injection")
        if isinstance(detector, InjectionDetector):
            injection = injection_scores(
                detector,
                read_jsonl(data / "injection_dev.jsonl"),
                read_jsonl(data / "benign_dev.jsonl"),
            )
            print_injection("dev", injection)


def print_injection(title: str, scores: InjectionScores) -> None:
    """One line per layer (and the fusion): AUC and, per kind, the rate it flags at its
    threshold; then each layer's latency."""
    print(json.dumps({"set": title, "tpr": scores.decision.tpr, "fpr": scores.decision.fpr}))
    auc = {layer.layer: round(layer.roc.auc, 4) for layer in scores.layers}
    for layer, kinds in scores.layer_by_kind.items():
        rates_by_kind = {k: f"{name} {value:.3f} (n={n})" for k, (name, value, n) in kinds.items()}
        print(json.dumps({"set": title, "layer": layer, "auc": auc.get(layer), **rates_by_kind}))
    print(json.dumps({"set": title, "latency_ms_p50_p95": scores.latency_ms}))


if __name__ == "__main__":
    main(sys.argv[1:])
