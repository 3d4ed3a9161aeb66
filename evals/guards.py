"""Guard quality on labelled sets: PII precision/recall per entity (span overlap) and
injection detection rates per kind, with the benign false-positive rate beside them.

Data formats (JSONL), as in ../shared/eval-data:
- PII: `{"id", "text", "entities": [{"type", "start", "end", "value"}]}`
- injection: `{"id", "text", "label": "attack", "kind"}`
- benign: `{"id", "text", "label": "benign", "kind"}`
Run: `python -m evals.guards DATA_DIR [--profile P]`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from guardrails.injection import InjectionDetector
from guardrails.pii import PresidioPII
from rag.compose import build_injection, build_pii
from rag.settings import load_settings


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def pii_scores(guard: PresidioPII, rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per entity type: a prediction is right when it overlaps a gold span of its type."""
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
                and f.start < entity["end"]
                and entity["start"] < f.end
                for f in findings
            ):
                gold_found[entity["type"]] += 1
        for f in findings:
            predicted[f.entity_type] += 1
            if any(
                e["type"] == f.entity_type and f.start < e["end"] and e["start"] < f.end
                for e in spans
            ):
                true_pos[f.entity_type] += 1
    scores = {}
    for entity_type in sorted(set(gold) | set(predicted)):
        precision = (
            true_pos[entity_type] / predicted[entity_type] if predicted[entity_type] else 0.0
        )
        recall = gold_found[entity_type] / gold[entity_type] if gold[entity_type] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[entity_type] = {
            "precision": round(precision, 3),
            "recall": round(recall, 3),
            "f1": round(f1, 3),
            "gold": gold[entity_type],
            "predicted": predicted[entity_type],
        }
    return scores


def injection_scores(
    guard: InjectionDetector, attacks: list[dict[str, Any]], benign: list[dict[str, Any]]
) -> dict[str, Any]:
    flagged_by_kind: dict[str, list[bool]] = defaultdict(list)
    layer_scores: list[tuple[str, dict[str, float], bool]] = []
    for row in attacks + benign:
        verdict = guard.check_sync(row["text"])
        is_attack = row["label"] == "attack"
        flagged_by_kind[("attack:" if is_attack else "benign:") + row["kind"]].append(
            verdict.flagged
        )
        scores = {layer: value[0] for layer, value in guard.layer_scores(row["text"]).items()}
        layer_scores.append((row["kind"], scores, is_attack))
    per_kind = {
        kind: {"rate": round(sum(v) / len(v), 3), "n": len(v)}
        for kind, v in sorted(flagged_by_kind.items())
    }
    attack_flags = [f for k, v in flagged_by_kind.items() if k.startswith("attack:") for f in v]
    benign_flags = [f for k, v in flagged_by_kind.items() if k.startswith("benign:") for f in v]
    return {
        "tpr": round(sum(attack_flags) / len(attack_flags), 3),
        "fpr": round(sum(benign_flags) / len(benign_flags), 3),
        "per_kind": per_kind,
        "sweep": _sweep(layer_scores),
    }


def _sweep(
    layer_scores: list[tuple[str, dict[str, float], bool]],
) -> dict[str, list[dict[str, float]]]:
    """TPR and FPR of each layer alone at thresholds from 0.05 to 0.95."""
    sweep: dict[str, list[dict[str, float]]] = {}
    layers = sorted({layer for _, scores, _ in layer_scores for layer in scores})
    for layer in layers:
        points = []
        for step in range(1, 20):
            threshold = step / 20
            attacks = [s[layer] >= threshold for _, s, is_attack in layer_scores if is_attack]
            benign = [s[layer] >= threshold for _, s, is_attack in layer_scores if not is_attack]
            points.append(
                {
                    "threshold": threshold,
                    "tpr": round(sum(attacks) / len(attacks), 3),
                    "fpr": round(sum(benign) / len(benign), 3),
                }
            )
        sweep[layer] = points
    return sweep


def main(argv: list[str]) -> None:
    data = Path(argv[0]) if argv else Path("../shared/eval-data")
    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(profile, data_dir=Path(data_dir))
        result = {
            "pii": pii_scores(build_pii(settings), _rows(data / "pii_dev.jsonl")),
            "injection": injection_scores(
                build_injection(settings),
                _rows(data / "injection_dev.jsonl"),
                _rows(data / "benign_dev.jsonl"),
            ),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
