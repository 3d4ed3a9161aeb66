"""Guard quality on labelled sets: PII precision/recall/F1 per entity (span overlap), injection
detection rates per kind with each layer's threshold sweep and ROC, and Llama Guard's agreement
with labels where the model is present.

Data formats (JSONL), as in ../shared/eval-data:
- PII: `{"id", "text", "entities": [{"type", "start", "end", "value"}]}`
- injection: `{"id", "text", "label": "attack", "kind"}`
- benign: `{"id", "text", "label": "benign", "kind"}`
- moderation (optional): `{"id", "text", "label": "safe" | "unsafe", "question"?: "..."}`,
  an answer and the question it replies to, for the output guard
Run: `python -m evals.guards DATA_DIR [--profile P]` (or `guardrag eval --suite guards`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.progress import Advance
from evals.scoring import Curve, Rates, precision_recall, rates, roc, sweep
from guardrails.injection import InjectionDetector
from guardrails.llama_guard import LlamaGuard
from guardrails.pii import PresidioPII
from guardrails.verdict import GuardContext
from rag.compose import build_injection, build_pii
from rag.settings import load_settings

SWEEP_THRESHOLDS = tuple(step / 20 for step in range(1, 20))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


# ---------------------------------------------------------------- PII


def _overlaps(start: int, end: int, other_start: int, other_end: int) -> bool:
    return start < other_end and other_start < end


def pii_scores(
    guard: PresidioPII, rows: Iterable[dict[str, Any]], advance: Advance | None = None
) -> dict[str, dict[str, float]]:
    """Per entity type, and `micro` over all of them: a prediction is right when it overlaps a
    gold span of its type; a gold span is found when a prediction of its type overlaps it."""
    true_pos: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    gold_found: Counter[str] = Counter()
    gold: Counter[str] = Counter()
    for row in rows:
        findings = guard.find(row["text"])
        spans = row["entities"]
        for entity in spans:
            gold[entity["type"]] += 1
            if any(
                f.entity_type == entity["type"]
                and _overlaps(f.start, f.end, entity["start"], entity["end"])
                for f in findings
            ):
                gold_found[entity["type"]] += 1
        for f in findings:
            predicted[f.entity_type] += 1
            if any(
                e["type"] == f.entity_type and _overlaps(f.start, f.end, e["start"], e["end"])
                for e in spans
            ):
                true_pos[f.entity_type] += 1
        if advance is not None:
            advance()
    scores: dict[str, dict[str, float]] = {}
    for entity_type in sorted(set(gold) | set(predicted)):
        pr = precision_recall(
            true_pos[entity_type],
            predicted[entity_type],
            gold_found[entity_type],
            gold[entity_type],
        )
        scores[entity_type] = {
            "precision": round(pr.precision, 4),
            "recall": round(pr.recall, 4),
            "f1": round(pr.f1, 4),
            "gold": gold[entity_type],
            "predicted": predicted[entity_type],
        }
    # Micro scores count only types the set labels: a type with no gold rows (Presidio's
    # DATE_TIME, say) has no right answers to be measured against.
    labelled = [t for t in scores if gold[t]]
    micro = precision_recall(
        sum(true_pos[t] for t in labelled),
        sum(predicted[t] for t in labelled),
        sum(gold_found[t] for t in labelled),
        sum(gold[t] for t in labelled),
    )
    scores["micro"] = {
        "precision": round(micro.precision, 4),
        "recall": round(micro.recall, 4),
        "f1": round(micro.f1, 4),
    }
    return scores


# ---------------------------------------------------------------- injection


@dataclass(frozen=True)
class LayerCurve:
    layer: str
    threshold: float
    roc: Curve
    sweep: tuple[tuple[float, Rates], ...]


@dataclass(frozen=True)
class InjectionScores:
    decision: Rates
    attacks: int
    benign: int
    # Attack kinds map to their TPR, benign kinds to their FPR.
    by_kind: dict[str, tuple[str, float, int]]
    layers: tuple[LayerCurve, ...]
    notes: str


def injection_scores(
    guard: InjectionDetector,
    attacks: Sequence[dict[str, Any]],
    benign: Sequence[dict[str, Any]],
    advance: Advance | None = None,
) -> InjectionScores:
    """The detector as configured (any layer over its threshold flags), and each layer's own
    score swept over thresholds: the ROC says what another threshold would buy."""
    flags: dict[tuple[bool, str], list[bool]] = defaultdict(list)
    layer_values: dict[str, list[float]] = defaultdict(list)
    is_attack: list[bool] = []
    for row in [*attacks, *benign]:
        verdict = guard.check_sync(row["text"])
        attack = row["label"] == "attack"
        flags[(attack, row["kind"])].append(verdict.flagged)
        for layer, (value, _) in guard.layer_scores(row["text"]).items():
            layer_values[layer].append(value)
        is_attack.append(attack)
        if advance is not None:
            advance()
    decision = rates(
        [f for (a, _), v in flags.items() if a for f in v],
        [f for (a, _), v in flags.items() if not a for f in v],
    )
    by_kind = {
        kind: ("tpr" if attack else "fpr", sum(v) / len(v), len(v))
        for (attack, kind), v in sorted(flags.items(), key=lambda item: item[0][1])
    }
    layers = tuple(
        LayerCurve(
            layer,
            getattr(guard.thresholds, layer),
            roc(values, is_attack),
            tuple(sweep(values, is_attack, SWEEP_THRESHOLDS)),
        )
        for layer, values in sorted(layer_values.items())
    )
    return InjectionScores(
        decision, sum(is_attack), len(is_attack) - sum(is_attack), by_kind, layers, guard.notes
    )


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
    guard: LlamaGuard, rows: Sequence[dict[str, Any]], advance: Advance | None = None
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
        pii = pii_scores(build_pii(settings), read_jsonl(data / "pii_dev.jsonl"))
        injection = injection_scores(
            build_injection(settings),
            read_jsonl(data / "injection_dev.jsonl"),
            read_jsonl(data / "benign_dev.jsonl"),
        )
    print(json.dumps({"pii": pii}, indent=1))
    print(json.dumps({"tpr": injection.decision.tpr, "fpr": injection.decision.fpr}))
    for kind, (rate_name, value, n) in injection.by_kind.items():
        print(json.dumps({"kind": kind, rate_name: round(value, 4), "n": n}))
    for layer in injection.layers:
        print(json.dumps({"layer": layer.layer, "auc": round(layer.roc.auc, 4)}))


if __name__ == "__main__":
    main(sys.argv[1:])
