"""`make bench`: every benchmark in one run and one table of ratios, each figure against a
baseline measured in the same run.

A benchmark is a module with `def run(argv: Sequence[str] = ()) -> list[BenchRow]`: it parses
the arguments it is handed, never the child's `sys.argv` (which holds this runner's own
`--child MODULE OUT`). Each runs in a child process of its own, so vLLM engines, GBs of test
stores and LlamaIndex's separate folder (evals/bench-llamaindex.txt) never meet in one
interpreter, and a benchmark that fails leaves a row saying so instead of ending the table.
Run: `python -m evals.bench [--only ingest,guards,serving]`; one benchmark as the runner starts
it: `python -m evals.bench --child MODULE OUT [ARGS...]` (ARGS go to that benchmark's parser).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
LLAMAINDEX_DIR = Path(sys.prefix) / "bench-llamaindex"


@dataclass(frozen=True)
class BenchRow:
    """One measured comparison. `ratio` is guardrag / baseline (formatted by the benchmark,
    which knows whether a percentage or a factor reads better); `target` and `met` say what
    the issue asked for, where it asked."""

    measure: str
    guardrag: str
    baseline: str
    ratio: str
    target: str = ""
    met: bool | None = None


def require_retrieval_set(dataset: Path) -> None:
    """Stops a benchmark that reads the development retrieval set when it is not there."""
    if not (dataset / "questions.jsonl").is_file():
        raise SystemExit(
            f"{dataset} holds no questions.jsonl: the development set belongs beside the "
            "checkout (../shared/eval-data/retrieval_qa); or pass --dataset PATH"
        )


class Benchmark(Protocol):
    def __call__(self, argv: Sequence[str] = ()) -> list[BenchRow]: ...


@dataclass(frozen=True)
class BenchSpec:
    name: str
    module: str
    # Stock LlamaIndex lives outside .venv; only benchmarks that compare with it see it.
    needs_llamaindex: bool = False


BENCHMARKS = (
    BenchSpec("ingest", "evals.bench_ingest", needs_llamaindex=True),
    BenchSpec("guards", "evals.bench_guards"),
    BenchSpec("serving", "evals.bench_serving"),
    BenchSpec("state", "evals.bench_state"),
)


def run_child(module: str, out: Path, argv: Sequence[str] = ()) -> None:
    """In the child: run one benchmark on `argv` and write its rows as JSON."""
    bench: Benchmark = importlib.import_module(module).run
    rows = bench(argv)
    out.write_text(json.dumps([asdict(r) for r in rows]))


def child_command(module: str, out: Path, argv: Sequence[str] = ()) -> list[str]:
    """How the runner starts one benchmark (tests/test_bench_entry.py starts them the same way)."""
    return [sys.executable, "-m", "evals.bench", "--child", module, str(out), *argv]


@dataclass(frozen=True)
class BenchOutcome:
    spec: BenchSpec
    rows: tuple[BenchRow, ...]
    seconds: float
    problem: str = ""


def run_one(spec: BenchSpec) -> BenchOutcome:
    if importlib.util.find_spec(spec.module) is None:
        return BenchOutcome(spec, (), 0.0, f"{spec.module} does not exist yet")
    environment = dict(os.environ)
    environment.setdefault("HF_HUB_OFFLINE", "1")
    if spec.needs_llamaindex and LLAMAINDEX_DIR.is_dir():
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(LLAMAINDEX_DIR), environment.get("PYTHONPATH", "")) if p
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="guardrag-bench-") as scratch:
        out = Path(scratch) / "rows.json"
        command = child_command(spec.module, out)
        # The child's own output (its progress, its table) goes straight to the terminal.
        done = subprocess.run(command, cwd=ROOT, env=environment, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0 or not out.exists():
            return BenchOutcome(spec, (), seconds, f"exited with status {done.returncode}")
        rows = tuple(BenchRow(**row) for row in json.loads(out.read_text()))
    return BenchOutcome(spec, rows, seconds)


def render(outcomes: Sequence[BenchOutcome]) -> Table:
    table = Table(
        title="guardrag benchmarks: ratio = guardrag / baseline, both measured in the same run",
        title_justify="left",
    )
    for column in ("bench", "measure", "guardrag", "baseline", "ratio", "target", ""):
        table.add_column(column, justify="left" if column in ("bench", "measure") else "right")
    for outcome in outcomes:
        label = f"{outcome.spec.name} ({outcome.seconds:.0f} s)"
        if outcome.problem:
            table.add_row(label, f"[yellow]not run:[/] {outcome.problem}", "", "", "", "", "")
        for row in outcome.rows:
            mark = {True: "[green]met[/]", False: "[red]missed[/]", None: ""}[row.met]
            table.add_row(
                label, row.measure, row.guardrag, row.baseline, row.ratio, row.target, mark
            )
            label = ""
        table.add_section()
    return table


def main(argv: Sequence[str] | None = None) -> int:
    # No abbreviations: a benchmark's own option (`--copies`) must never be read as `--child`.
    parser = argparse.ArgumentParser(
        prog="python -m evals.bench", description=__doc__, allow_abbrev=False
    )
    parser.add_argument("--only", default="", help="comma-separated: ingest, guards, serving")
    # `--child MODULE OUT [ARGS...]`: whatever follows MODULE and OUT (`--help` included)
    # belongs to that benchmark's own parser.
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        if len(args.child) < 2:
            parser.error("--child needs MODULE and OUT")
        run_child(args.child[0], Path(args.child[1]), args.child[2:])
        return 0
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {b.name for b in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    outcomes = [run_one(b) for b in BENCHMARKS if not wanted or b.name in wanted]
    console = Console(width=None if Console().is_terminal else 180)
    console.print(render(outcomes))
    return 1 if any(o.problem and "does not exist" not in o.problem for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
