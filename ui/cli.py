"""The `guardrag` command: ingest, ask, chat, and model provisioning."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from evals.cli import eval_command
from rag.models import list_models, pull
from rag.multi import MergeStrategy
from rag.settings import SettingsError, load_settings

# The composition root (rag.compose), the pipeline and ingestion are imported inside the
# commands that use them: at module level they made every command, `--help` included, import
# Presidio, spaCy and torch first (6.5 s of 7.7 s here). tests/test_cli_fast.py keeps it so.
if TYPE_CHECKING:
    from ingest.run import IngestProgress
    from rag.schema import Answer
    from rag.settings import Settings

app = typer.Typer(
    help="guardrag: a guarded retrieval-augmented chat over your documents.", no_args_is_help=True
)
guard_app = typer.Typer(
    help="Run the guards on text, outside any conversation.", no_args_is_help=True
)
quarantine_app = typer.Typer(
    help="Chunks flagged as prompt injection at ingest.", no_args_is_help=True
)
models_app = typer.Typer(
    help="Provision and inspect the models the profile names.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(guard_app, name="guard")
# `guardrag eval`: its heavy imports happen inside the command.
app.command("eval")(eval_command)

console = Console()
err = Console(stderr=True)


def user_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    """Faults a user can fix (and `more` a command adds); each message says how. Anything else
    is a bug and keeps its traceback. A function, evaluated when an exception is matched: the
    modules defining these are the heavy ones, already imported by any command raising them."""
    from ingest.run import IngestError
    from rag.generator import ModelUnavailable
    from rag.models import ModelMissing
    from rag.pipeline import QuestionError
    from rag.router import RouterError
    from rag.store import StoreError

    return (
        SettingsError,
        IngestError,
        StoreError,
        ModelMissing,
        ModelUnavailable,
        QuestionError,
        RouterError,
        *more,
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@app.callback()
def main() -> None:
    """guardrag: a guarded retrieval-augmented chat over your documents."""
    # SIGTERM (kill, systemd, docker stop) ends a process without running atexit handlers,
    # and vLLM's engine processes would outlive it holding gigabytes; as SystemExit, the
    # handlers run and shut the engines down.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        help="Profile name in profiles/ or a YAML path (default: GUARDRAG_PROFILE or local).",
    ),
]


def _settings(profile: str | None) -> Settings:
    try:
        return load_settings(profile)
    except SettingsError as exc:
        _fail(exc)


def _fail(exc: BaseException) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder of documents to ingest.")],
    profile: ProfileOption = None,
    prune: Annotated[
        bool, typer.Option(help="Remove chunks of files no longer in the folder.")
    ] = True,
    strict: Annotated[bool, typer.Option(help="Exit non-zero when any file fails.")] = False,
    report_json: Annotated[
        Path | None, typer.Option("--report", help="Write the run's report as JSON here.")
    ] = None,
) -> None:
    """Ingest a folder (PDF, DOCX, HTML, Markdown, text) into the store, incrementally."""
    from ingest.run import build_ingest_parts, ingest_folder

    settings = _settings(profile)
    try:
        # The embedder loads at the first file that changed (an unchanged folder never does).
        with console.status("opening the store…"):
            parts = build_ingest_parts(settings)
        if console.is_terminal:
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("files · {task.fields[chunks]} chunks · {task.fields[rate]} chunks/s"),
                TimeRemainingColumn(),
                console=console,
            ) as bar:
                task = bar.add_task("ingesting", total=None, chunks=0, rate="-")

                def show(p: IngestProgress) -> None:
                    bar.update(
                        task,
                        completed=p.files_done,
                        total=p.files_total,
                        chunks=p.chunks_embedded,
                        rate=f"{p.chunks_per_second:.0f}",
                    )
                    if p.message.startswith("failed"):
                        bar.console.log(escape(p.message))

                report = ingest_folder(path, parts, prune=prune, progress=show)
        else:
            # Not a terminal (CI, a log file): one plain line per file.
            report = ingest_folder(
                path,
                parts,
                prune=prune,
                progress=lambda p: console.log(
                    f"{escape(p.message)} · {p.files_done}/{p.files_total} files · "
                    f"{p.chunks_embedded} chunks · {p.chunks_per_second:.0f} chunks/s"
                ),
            )
        parts.store.close()
    except user_errors() as exc:
        _fail(exc)
    table = Table(title=f"ingested {report.root} in {report.seconds:.1f} s")
    for key in report.summary():
        table.add_column(key.replace("_", " "))
    table.add_row(*(str(v) for v in report.summary().values()))
    console.print(table)
    for file, note in report.notices:
        err.print(f"[cyan]note[/] {escape(file)}: {escape(note)}")
    if report.chunks_unscanned:
        err.print(
            f"[yellow]note[/] {report.chunks_unscanned} chunk(s) stored without an injection "
            "scan: guards.off names injection (a later ingest rescans only files that change)"
        )
    for file, reason in report.failed:
        err.print(f"[yellow]failed[/] {escape(file)}: {escape(reason)}")
    if report_json:
        report_json.write_text(json.dumps(asdict(report), indent=2))
    if strict and report.failed:
        raise typer.Exit(1)


def answer_json(answer: Answer) -> dict[str, Any]:
    data = asdict(answer)
    data["verdicts"] = [v.record() for v in answer.verdicts]
    data["prompt"] = [asdict(m) for m in answer.prompt]
    return data


def _print_answer_details(answer: Answer) -> None:
    if answer.citations:
        table = Table(title="citations")
        for column in ("#", "source", "score"):
            table.add_column(column)
        for c in answer.citations:
            table.add_row(str(c.number), c.location, f"{c.score:.3f}")
        console.print(table)
    verdicts = Table(title="guards")
    for column in ("guard", "outcome", "action", "score", "reason"):
        verdicts.add_column(column)
    for v in answer.verdicts:
        verdicts.add_row(
            v.guard,
            v.outcome,
            v.action + (f" ({v.policy})" if v.policy else ""),
            f"{v.score:.2f}",
            v.reason,
        )
    console.print(verdicts)
    if answer.route:
        r = answer.route
        console.print(
            f"route: {r.task} → {r.model} (confidence {r.confidence:.2f}; {r.reason})",
            markup=False,
        )
    stages = Table(title="stages")
    for column in ("stage", "status", "ms", "detail"):
        stages.add_column(column)
    for s in answer.stages:
        stages.add_row(s.name, s.status, f"{s.ms:.1f}", s.detail)
    console.print(stages)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    profile: ProfileOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole answer as JSON.")
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="A model from generation.models instead of the router's.")
    ] = None,
    hint: Annotated[
        list[str] | None, typer.Option("--hint", help="A task hint for the router (repeatable).")
    ] = None,
    fan_out: Annotated[
        list[str] | None,
        typer.Option("--fan-out", help="Ask these models at once and merge (repeatable)."),
    ] = None,
    merge: Annotated[
        MergeStrategy, typer.Option(help="How --fan-out answers are merged.")
    ] = MergeStrategy.CONSENSUS,
) -> None:
    """Ask one question: the answer streams, then citations, verdicts, route and timings."""
    from rag.compose import build_pipeline, shutdown_engines
    from rag.pipeline import AskOptions, QuestionError, validate_question
    from rag.schema import Final, Retraction, TextDelta

    settings = _settings(profile)
    options = AskOptions(
        task_hints=tuple(hint or ()), model=model, fan_out=tuple(fan_out or ()), merge=merge
    )
    try:
        # Before any model loads: an empty question needs no pipeline to be refused.
        validate_question(question)
    except QuestionError as exc:
        _fail(exc)

    async def run() -> Answer:
        pipeline = build_pipeline(settings)
        answer: Answer | None = None
        try:
            async for event in pipeline.stream(question, options=options):
                if isinstance(event, TextDelta) and not as_json:
                    console.print(event.text, end="", soft_wrap=True, highlight=False, markup=False)
                elif isinstance(event, Retraction) and not as_json:
                    console.print(f"\n[red]retracted:[/] {escape(event.reason)}")
                elif isinstance(event, Final):
                    answer = event.answer
        finally:
            # vLLM's shutdown waits on tasks of the loop that served the request: stop the
            # engines while that loop still runs.
            shutdown_engines()
        assert answer is not None
        return answer

    try:
        answer = asyncio.run(run())
    except user_errors() as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(answer_json(answer), indent=2) + "\n")
        return
    if answer.status != "answered":
        console.print(f"[bold red]{answer.status}:[/] {escape(answer.text)}")
    console.print()
    _print_answer_details(answer)


@app.command()
def route(
    question: Annotated[str, typer.Argument(help="The question to route.")],
    hint: Annotated[
        list[str] | None,
        typer.Option("--hint", help="A task name or keyword, as a caller's task hint (repeat it)."),
    ] = None,
    profile: ProfileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Show which task a question is and which model would answer it, without asking it."""
    from rag.compose import build_embedder, build_router

    settings = _settings(profile)
    try:
        router = build_router(settings, build_embedder(settings), settings.generation.models)
    except user_errors() as exc:
        _fail(exc)
    hints = tuple(hint or ())
    # The first call pays one-off start-up costs (kernels, tokenizer), not a route's.
    router.route(question, hints)
    started = time.perf_counter()
    decision = router.route(question, hints)
    ms = round((time.perf_counter() - started) * 1000, 2)
    if as_json:
        sys.stdout.write(json.dumps({**asdict(decision), "ms": ms}) + "\n")
        return
    console.print(f"task:       {decision.task}", highlight=False)
    console.print(f"model:      {decision.model}", highlight=False)
    console.print(f"confidence: {decision.confidence:.2f}", highlight=False)
    console.print(f"runner-up:  {decision.runner_up or '-'}", highlight=False)
    console.print(f"reason:     {decision.reason}", highlight=False, markup=False)
    console.print(f"ms:         {ms:.1f}", highlight=False)


@app.command()
def chat(
    profile: ProfileOption = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default from settings).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings, 7860).")] = None,
) -> None:
    """Serve the Gradio chat."""
    from ui.chat import serve_chat
    from ui.listen import UnsafeBinding

    settings = _settings(profile)
    try:
        serve_chat(settings, host or settings.chat.host, port or settings.chat.port)
    except user_errors(UnsafeBinding) as exc:
        _fail(exc)


@app.command()
def serve(
    profile: ProfileOption = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default: api.host).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port, 8080).")] = None,
) -> None:
    """Serve the OpenAI-compatible API (/v1) and the chat (/chat) on one port."""
    from ui.listen import UnsafeBinding
    from ui.serve import serve as serve_app

    settings = _settings(profile)
    try:
        serve_app(settings, host or settings.api.host, port or settings.api.port)
    except user_errors(UnsafeBinding) as exc:
        _fail(exc)


@app.command("hash-password")
def hash_password_command() -> None:
    """Hash a chat password (scrypt) for the profile's chat.users; read from the prompt."""
    from ui.auth import hash_password

    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    typer.echo(hash_password(password))


@quarantine_app.command("list")
def quarantine_list(profile: ProfileOption = None) -> None:
    """Every chunk ingest flagged as injection: file, section, score and the rules it matched."""
    from rag.compose import build_store
    from rag.store import StoreError

    settings = _settings(profile)
    try:
        store = build_store(settings)
        if store.open_existing() is None:
            raise StoreError("no documents ingested yet: run `guardrag ingest PATH` first")
        flagged = [c for c in store.scroll_chunks() if c.flagged]
    except user_errors() as exc:
        _fail(exc)
    table = Table(title=f"{len(flagged)} quarantined chunk(s)")
    for column in ("file", "section", "score", "rules", "start of text"):
        table.add_column(column, overflow="fold")
    for c in sorted(flagged, key=lambda c: (c.path, c.start)):
        table.add_row(
            c.path,
            c.section,
            f"{c.injection_score:.2f}",
            ", ".join(c.injection_categories),
            c.text[:80],
        )
    console.print(table)


class CheckedAs(StrEnum):
    question = "question"
    chunk = "chunk"
    answer = "answer"


@guard_app.command("check")
def guard_check(
    text: Annotated[str | None, typer.Argument(help="The text to check.")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="JSONL rows with `id` and `text`, one verdict line each."),
    ] = None,
    checked_as: Annotated[
        CheckedAs, typer.Option("--as", help="What the text is: the guards and policies differ.")
    ] = CheckedAs.question,
    profile: ProfileOption = None,
) -> None:
    """Print one JSON line per text: every guard's verdict with the policy applied, the PII
    spans found (offsets and types, never the values) and whether the text would be blocked."""
    if (text is None) == (file is None):
        _fail(ValueError("give either TEXT or --file F.jsonl"))
    from rag.compose import build_guard_checker

    settings = _settings(profile)
    rows: list[dict[str, Any]] = [{"id": "1", "text": text}]
    bad_rows: list[str] = []
    if file is not None:
        rows, bad_rows = _jsonl_rows(file)
    # A malformed row is reported with its line and the others are still checked; the exit
    # status says that one failed.
    for problem in bad_rows:
        err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
    if rows:
        try:
            checker = build_guard_checker(settings)
            for row in rows:
                result = asyncio.run(checker.check(str(row["text"]), checked_as.value))
                line = json.dumps({"id": row.get("id"), **result}, ensure_ascii=False)
                sys.stdout.write(line + "\n")
        except user_errors() as exc:
            _fail(exc)
    if bad_rows:
        raise typer.Exit(2)


def _jsonl_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a JSON Lines file, and a message (`file:line: why`) for each bad one."""
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(ValueError(f"cannot read {path}: {exc}"))
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    # JSON Lines ends a line at \n only. str.splitlines() also breaks at U+2028, U+2029,
    # U+0085 and other characters a JSON string may hold raw, cutting such a row in two.
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip(" \t\r"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict) or "text" not in row:
            problems.append(f"{path}:{number}: a row needs a `text` field")
            continue
        rows.append(row)
    return rows, problems


@models_app.command("pull")
def models_pull(profile: ProfileOption = None) -> None:
    """Provision the models this profile names that ship offline (converting SmolLM2 once)."""
    settings = _settings(profile)
    try:
        statuses = pull(settings, report=lambda line: console.log(line))
    except user_errors() as exc:
        _fail(exc)
    _print_models(statuses)


@models_app.command("train")
def models_train(
    what: Annotated[str, typer.Argument(help="What to train: `injection` (the injection head).")],
    profile: ProfileOption = None,
    dev_data: Annotated[
        Path | None,
        typer.Option(
            help="A folder with injection_dev.jsonl and benign_dev.jsonl: measured after "
            "training (never trained or calibrated on) and written into the model card."
        ),
    ] = None,
) -> None:
    """Train a guard model for this profile: `injection` trains the injection head on the
    embedder's vectors (seeded; `models pull` runs it when the head is missing)."""
    from rag.models import train_injection_head

    if what != "injection":
        _fail(ValueError(f"nothing called {what!r} to train; the choice is: injection"))
    settings = _settings(profile)
    try:
        folder = train_injection_head(settings, report=lambda line: console.log(line))
    except user_errors() as exc:
        _fail(exc)
    if dev_data is not None:
        from evals.guards import dev_metrics_into_card

        with console.status("measuring the development sets…"):
            dev_metrics_into_card(settings, folder, dev_data)
    console.print(f"model card: {folder / 'MODEL_CARD.md'}")


@models_app.command("list")
def models_list(
    profile: ProfileOption = None,
    load: Annotated[
        bool,
        typer.Option(
            "--load",
            help="Also load each model as the stage using it would (imports torch, "
            "transformers and spaCy: seconds per model).",
        ),
    ] = False,
) -> None:
    """Each model the profile names: where it is and whether it is usable. By default from its
    files alone, importing no model library: config.json and the tokenizer parse, every weights
    file is whole (a safetensors header must match the file's size) and a spaCy package's files
    have the sizes pip recorded, so a missing or cut-short file says "no". `--load` also loads
    each model (seconds each)."""
    settings = _settings(profile)
    with console.status("loading each model…" if load else "checking each model's files…"):
        statuses = list_models(settings, try_load=load)
    _print_models(statuses)


def _print_models(statuses: list[Any]) -> None:
    table = Table(title="models")
    for column in ("role", "model", "where", "usable", "detail"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        usable = "[green]yes[/]" if s.usable else "[red]no[/]"
        table.add_row(s.role, s.model_id, str(s.path or "missing"), usable, s.detail)
    console.print(table)


if __name__ == "__main__":
    app()
