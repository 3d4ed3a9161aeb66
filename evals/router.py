"""Router quality on the project's labelled questions: accuracy, accuracy per task, the
confusion matrix (low-confidence default routes count as the default task) and ms per call.

Rows (JSONL): `{"id", "text", "task", "split"}` with split `dev` (used to choose the router's
settings) or `test` (never looked at while choosing); optional `hints`, a list of words.
Run: `python -m evals.router [ROWS] [--split test|dev|all] [--profile P] [--json]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from rag.compose import build_embedder
from rag.router import router_from_settings
from rag.schema import Route
from rag.settings import load_settings

ROWS_PATH = Path(__file__).resolve().parent / "data" / "router_labelled.jsonl"


class Router(Protocol):
    def route(self, question: str, task_hints: Sequence[str] = ()) -> Route: ...


@dataclass(frozen=True)
class RouterRow:
    id: str
    text: str
    task: str
    split: str = ""
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskAccuracy:
    task: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class Miss:
    id: str
    expected: str
    routed: str
    confidence: float


@dataclass(frozen=True)
class RouterReport:
    total: int
    correct: int
    per_task: tuple[TaskAccuracy, ...]
    # confusion[i][j]: questions labelled labels[i] that were routed to labels[j].
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    # Routes taken because the best task's confidence was under the threshold.
    defaulted: int
    ms_p50: float
    ms_p95: float
    misses: tuple[Miss, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def load_router_rows(path: Path = ROWS_PATH, split: str | None = None) -> list[RouterRow]:
    """Every row, or those of one split (`dev`, `test`)."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                raw = json.loads(line)
                row = RouterRow(
                    raw["id"],
                    raw["text"],
                    raw["task"],
                    raw.get("split", ""),
                    tuple(raw.get("hints", ())),
                )
                if split is None or row.split == split:
                    rows.append(row)
    return rows


def _percentile(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def evaluate_router(router: Router, rows: Sequence[RouterRow]) -> RouterReport:
    if rows:
        # The first call pays one-off costs (tokenizer and kernel warm-up), not a route's.
        router.route(rows[0].text, rows[0].hints)
    routes: list[Route] = []
    ms: list[float] = []
    for row in rows:
        started = time.perf_counter()
        routes.append(router.route(row.text, row.hints))
        ms.append((time.perf_counter() - started) * 1000)
    labels = tuple(dict.fromkeys([r.task for r in rows] + [r.task for r in routes]))
    pairs = Counter((row.task, route.task) for row, route in zip(rows, routes, strict=True))
    per_task = tuple(
        TaskAccuracy(task, pairs[(task, task)], sum(1 for r in rows if r.task == task))
        for task in dict.fromkeys(r.task for r in rows)
    )
    return RouterReport(
        total=len(rows),
        correct=sum(pairs[(t, t)] for t in labels),
        per_task=per_task,
        labels=labels,
        confusion=tuple(tuple(pairs[(true, routed)] for routed in labels) for true in labels),
        defaulted=sum(r.reason.startswith("low confidence") for r in routes),
        ms_p50=round(_percentile(ms, 50), 2),
        ms_p95=round(_percentile(ms, 95), 2),
        misses=tuple(
            Miss(row.id, row.task, route.task, route.confidence)
            for row, route in zip(rows, routes, strict=True)
            if row.task != route.task
        ),
    )


def format_report(report: RouterReport) -> str:
    short = [label[:6] for label in report.labels]
    width = max(len(label) for label in report.labels)
    lines = [
        f"accuracy {report.accuracy:.3f} ({report.correct}/{report.total}); "
        f"{report.defaulted} low-confidence default routes; "
        f"ms per call p50 {report.ms_p50:.1f} p95 {report.ms_p95:.1f}",
        "",
        *(f"{t.task:<{width}}  {t.accuracy:.3f} ({t.correct}/{t.total})" for t in report.per_task),
        "",
        "confusion (rows: labelled task, columns: routed task)",
        " " * width + "  " + " ".join(f"{s:>6}" for s in short),
        *(
            f"{label:<{width}}  " + " ".join(f"{n:>6}" for n in row)
            for label, row in zip(report.labels, report.confusion, strict=True)
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv and not argv[0].startswith("--") else ROWS_PATH
    split = argv[argv.index("--split") + 1] if "--split" in argv else "test"
    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(profile, data_dir=Path(data_dir))
        router = router_from_settings(
            settings.router, build_embedder(settings), settings.generation.models
        )
        report = evaluate_router(router, load_router_rows(path, None if split == "all" else split))
    if "--json" in argv:
        print(json.dumps({"split": split, "accuracy": report.accuracy, **asdict(report)}))
    else:
        print(f"split {split}: {report.total} questions from {path}")
        print(format_report(report))


if __name__ == "__main__":
    main(sys.argv[1:])
