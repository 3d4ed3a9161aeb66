"""`guardrag eval`: the command function ui/cli.py registers, also runnable alone as
`python -m evals.cli`. Exit status: 0 done (and the gate passed), 1 the gate found a
regression, 2 the run could not start (bad suite name, missing data, unreadable baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evals.metrics import DEFAULT_ANSWERS_LIMIT, SUITES

# The development sets live beside the checkout (never copied into the repository).
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "eval-data"


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def eval_command(
    suite: Annotated[
        list[str],
        typer.Option(
            "--suite",
            "-s",
            metavar="SUITE",
            help=f"{'|'.join(SUITES)}|all; repeat or comma-separate for several.",
        ),
    ] = ["all"],  # noqa: B006 - typer reads the default; it is never mutated
    data: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Folder of labelled sets, or the retrieval set's own folder (questions.jsonl "
                f"and docs/); default: {DEFAULT_DATA} when present."
            )
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder for metrics.json, report.html and summary.md.")
    ] = Path("eval-report"),
    baseline: Annotated[
        Path | None,
        typer.Option(help="A saved metrics.json: exit 1 when a metric regressed beyond tolerance."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most N rows per labelled set (a spread sample).")
    ] = None,
    answers_limit: Annotated[
        int,
        typer.Option(min=1, help="Questions the answers and latency suites ask the pipeline."),
    ] = DEFAULT_ANSWERS_LIMIT,
    llamaindex: Annotated[
        bool, typer.Option(help="Run stock LlamaIndex beside retrieval and latency.")
    ] = True,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile name or YAML path.")
    ] = None,
) -> None:
    """Offline evaluation: retrieval, guards, router, answers and latency, in one report."""
    # Imported here: `guardrag --help` and every other command stay as quick as before.
    from evals.gate import gate_table
    from evals.progress import RunProgress
    from evals.report import headline_table, retrieval_table, write_reports
    from evals.run import EvalOptions, gate_against, load_run, parse_suites, run_eval
    from evals.suites import EvalData

    # In CI logs and pipes rich would wrap tables at 80 columns.
    console = Console(width=None if Console().is_terminal else 150)
    err = Console(stderr=True)
    try:
        suites = parse_suites(suite)
        folder = data or DEFAULT_DATA
        if not folder.is_dir():
            raise ValueError(
                f"no evaluation data at {folder}: pass --data DIR (README: dataset formats)"
            )
        EvalData(folder).check_for(suites)
        if baseline is not None:
            load_run(baseline)  # refuse an unreadable baseline before spending minutes
    except ValueError as exc:
        # Unwrapped and unparsed: the message names paths, to copy whole (and a `[` in one is
        # not rich markup).
        err.print("[bold red]error:[/]", escape(str(exc)), soft_wrap=True)
        raise typer.Exit(2) from exc
    options = EvalOptions(
        suites=suites,
        data=folder,
        out=out,
        profile=profile,
        limit=limit,
        answers_limit=answers_limit,
        llamaindex=llamaindex,
        baseline=baseline,
    )
    record = run_eval(options, RunProgress(err))
    gate = None
    if baseline is not None:
        gate = gate_against(record, baseline)
        record["gate"] = {
            "baseline": str(baseline),
            "passed": gate.passed,
            "failed": [row.key for row in gate.failed],
            "warnings": list(gate.warnings),
        }
    paths = write_reports(record, out, gate)
    metrics = record["metrics"]
    retrieval = retrieval_table(metrics)
    if retrieval:
        console.print(_table("retrieval", *retrieval))
    console.print(_table("summary", *headline_table(metrics)))
    for key, why in record["unavailable"].items():
        console.print(f"[yellow]not measured[/] {key}: {why}", highlight=False)
    for name, info in record["suites"].items():
        if info["status"] == "failed":
            console.print(f"[red]suite {name} failed:[/] {info['error']}", highlight=False)
    console.print(
        f"wrote {paths['metrics']}, {paths['html']}, {paths['markdown']} "
        f"({record['run']['seconds']:.0f} s)"
    )
    failed_suites = [n for n, info in record["suites"].items() if info["status"] == "failed"]
    if gate is not None:
        for warning in gate.warnings:
            console.print(f"[yellow]gate:[/] {warning}", highlight=False)
        console.print(gate_table(gate))
        if not gate.passed:
            console.print(f"[bold red]regression:[/] {', '.join(r.key for r in gate.failed)}")
            raise typer.Exit(1)
        console.print("[green]gate passed[/]")
    if failed_suites:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(eval_command)
