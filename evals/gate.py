"""The regression gate: a run's metrics against a saved baseline run, key by key, each with
its direction and tolerance from evals/metrics.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rich.table import Table

from evals.metrics import rule_for, suite_of

GateStatus = Literal["ok", "better", "regressed", "missing", "info"]


@dataclass(frozen=True)
class GateRow:
    key: str
    baseline: float
    current: float | None
    tolerance: float
    direction: str
    status: GateStatus

    @property
    def delta(self) -> float | None:
        return None if self.current is None else self.current - self.baseline


@dataclass(frozen=True)
class GateResult:
    rows: tuple[GateRow, ...]
    # Why the two runs may not be comparable (other data, another limit): said, not fatal.
    warnings: tuple[str, ...]

    @property
    def failed(self) -> tuple[GateRow, ...]:
        return tuple(r for r in self.rows if r.status in ("regressed", "missing"))

    @property
    def passed(self) -> bool:
        return not self.failed


def compare_metric(key: str, baseline: float, current: float | None) -> GateRow:
    rule = rule_for(key)
    tolerance = rule.tolerance(baseline)
    if rule.direction == "info":
        return GateRow(key, baseline, current, 0.0, "info", "info")
    if current is None:
        return GateRow(key, baseline, None, tolerance, rule.direction, "missing")
    # Positive `gain` is better whichever direction the metric runs.
    gain = current - baseline if rule.direction == "higher" else baseline - current
    status: GateStatus = "regressed" if gain < -tolerance - 1e-9 else "ok"
    if status == "ok" and gain > tolerance:
        status = "better"
    return GateRow(key, baseline, current, tolerance, rule.direction, status)


def compare_runs(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> GateResult:
    """Every baseline metric of a suite the current run ran is compared; one the current run
    no longer reports counts as a failure (a metric must not vanish silently). Suites the
    current run did not run are left out."""
    ran = {name for name, suite in current["suites"].items() if suite.get("status") == "ran"}
    measured: Mapping[str, float] = current["metrics"]
    rows = [
        compare_metric(key, value, measured.get(key))
        for key, value in sorted(baseline["metrics"].items())
        if suite_of(key) in ran
    ]
    warnings = []
    for field in ("limit", "answers_limit", "data_fingerprint"):
        ours, theirs = current["run"].get(field), baseline["run"].get(field)
        if ours != theirs:
            warnings.append(f"run.{field} differs: baseline {theirs!r}, this run {ours!r}")
    if not rows:
        warnings.append("no metric of the suites this run ran is in the baseline")
    return GateResult(tuple(rows), tuple(warnings))


def gate_table(result: GateResult, show_all: bool = False) -> Table:
    """Regressions and missing metrics always; the rest only with `show_all` (or a summary)."""
    table = Table(title="regression gate against the baseline", title_justify="left")
    for column in ("metric", "baseline", "this run", "delta", "tolerance", "better", "status"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    style = {"regressed": "red", "missing": "red", "better": "green", "ok": "", "info": "dim"}
    for row in result.rows:
        if not show_all and row.status in ("ok", "info"):
            continue
        table.add_row(
            row.key,
            _number(row.baseline),
            "-" if row.current is None else _number(row.current),
            "-" if row.delta is None else f"{row.delta:+.4g}",
            "" if row.direction == "info" else f"±{row.tolerance:.3g}",
            row.direction,
            f"[{style[row.status]}]{row.status}[/]" if style[row.status] else row.status,
        )
    counts = {s: sum(1 for r in result.rows if r.status == s) for s in style}
    table.caption = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return table


def _number(value: float) -> str:
    return f"{value:.4g}"
