"""Guard latency: each input guard's p50/p95 on real prompts, and the guards' share of whole
requests against generation, measured in one run (`make bench-guards`). The guards are the
pipeline's own lists, by registered name: a guard added to rag/compose.py GUARDS shows up.

Input guards run concurrently with query embedding and search, so what a user waits for is
the longer of the two, not their sum: the table shows both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evals.bench import BenchRow
from evals.scoring import percentile
from guardrails.pii import PseudonymVault
from guardrails.registry import PolicedGuard
from guardrails.verdict import GuardContext
from ingest.run import build_ingest_parts, ingest_folder
from rag.compose import build_pipeline, shutdown_engines, start_engines
from rag.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
EVAL_DATA = ROOT.parent / "shared" / "eval-data"
QUESTIONS = [
    "What is the minimum password length?",
    "Who approves an expense above 2,500 euros?",
    "How many days a week can I work remotely?",
    "When is salary paid?",
    "I am Ada Lovelace (ada.lovelace@example.com). How many days of annual leave do I get?",
    "How long is the warranty on a lantern?",
]


def timed_ms(check: Callable[[str], object], texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        check(text)
        out.append((time.perf_counter() - started) * 1000)
    return out


def input_guard_timings(
    guards: Sequence[PolicedGuard],
    texts: Sequence[str],
    before_each: Callable[[str], object] | None = None,
) -> dict[str, list[float]]:
    """Each guard alone on every text, as a request runs it (its policy applied, a
    conversation's vault in the context), keyed by its registered name and class.
    `before_each`, untimed, runs on each text first (what a request has already done)."""

    async def time_each() -> dict[str, list[float]]:
        timings = {}
        for guard in guards:
            context = GuardContext(checked_as="question", vault=PseudonymVault())
            # Warmed once first: first calls load spaCy pipes and compile regexes.
            await guard.check(texts[0], context)
            times = []
            for text in texts:
                if before_each is not None:
                    before_each(text)
                started = time.perf_counter()
                await guard.check(text, context)
                times.append((time.perf_counter() - started) * 1000)
            timings[f"{guard.name} ({type(guard.guard).__name__})"] = times
        return timings

    return asyncio.run(time_each())


def prompts(limit: int) -> list[str]:
    texts = []
    for name in ("benign_dev.jsonl", "injection_dev.jsonl"):
        path = EVAL_DATA / name
        if path.exists():
            texts += [json.loads(line)["text"] for line in path.open(encoding="utf-8")][
                : limit // 2
            ]
    return texts or QUESTIONS * (limit // len(QUESTIONS))


async def request_timings(pipeline, rounds: int) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    rows = []
    for _ in range(rounds):
        for question in QUESTIONS:
            answer = await pipeline.ask(question)
            rows.append(answer.timings_ms)
    # Stopped while the loop that served the requests still runs: vLLM's shutdown waits on
    # tasks of that loop, and after asyncio.run returns it would wait forever.
    shutdown_engines()
    return rows


@dataclass(frozen=True)
class GuardTimings:
    prompts: int
    per_guard: dict[str, list[float]]
    requests: list[dict[str, float]]
    # Output guards that cannot run here (a model not on disk): their policy decides.
    unavailable_output_guards: tuple[str, ...]


def measure() -> GuardTimings:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(data_dir=Path(data_dir))
        parts = build_ingest_parts(settings)
        ingest_folder(ROOT / "examples", parts)
        parts.store.close()
        pipeline = build_pipeline(settings)
        start_engines(pipeline)
        texts = prompts(200)
        stages = pipeline.stages
        if not stages.input_guards:
            raise SystemExit(
                "every input guard is off in this profile (guards.off): nothing to time"
            )
        # First, while no question's vector is kept yet (the embedder keeps its last 256).
        retrieval = timed_ms(pipeline.retrieve, texts[:60])
        stages.embedder.forget_queries()
        per_guard = input_guard_timings(stages.input_guards, texts)
        # In a request the injection head reuses the question's vector, which retrieval
        # computes beside it (the embedder's query path keeps it): the check's own cost is
        # its time once that vector exists. The row above includes embedding the question.
        injection = [g for g in stages.input_guards if g.name == "injection"]
        if injection:
            given = input_guard_timings(injection, texts, stages.embedder.embed_query)
            per_guard.update(
                {f"{name}, the question's vector already computed": v for name, v in given.items()}
            )
        per_guard["query embedding + search"] = retrieval
        requests = asyncio.run(request_timings(pipeline, rounds=2))
    unavailable = tuple(g.name for g in stages.output_guards if not g.available)
    return GuardTimings(len(texts), per_guard, requests, unavailable)


def rows(timings: GuardTimings) -> list[BenchRow]:
    """Each guard against generation, the baseline every request pays in the same run."""

    def stage(name: str) -> list[float]:
        return [r.get(name, 0.0) for r in timings.requests]

    guards, generate, total = stage("input_guards"), stage("generate"), stage("total")
    gen_p50 = percentile(generate, 50)

    def row(measure: str, values: list[float]) -> BenchRow:
        p50, p95 = percentile(values, 50), percentile(values, 95)
        return BenchRow(
            f"{measure} p50 / p95 vs generation p50",
            f"{p50:.1f} / {p95:.1f} ms",
            f"{gen_p50:.0f} ms",
            f"{p50 / gen_p50:.2%}" if gen_p50 else "-",
        )

    out = [row(f"{name}, {len(v)} prompts", v) for name, v in timings.per_guard.items()]
    out += [
        BenchRow(
            f"{name} (output): cannot run here, verdict unavailable, policy applied", "", "", ""
        )
        for name in timings.unavailable_output_guards
    ]
    n = len(timings.requests)
    out += [
        row(f"request: input guards ({n} requests)", guards),
        row("request: retrieve (runs beside the guards)", stage("retrieve")),
        row("request: total", total),
    ]
    share = statistics.fmean(g / t for g, t in zip(guards, total, strict=True) if t)
    versus = statistics.fmean(g / gen for g, gen in zip(guards, generate, strict=True) if gen)
    out += [
        BenchRow("input guards / total request (mean ratio)", "", "", f"{share:.1%}"),
        BenchRow("input guards / generation (mean ratio)", "", "", f"{versus:.1%}"),
    ]
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals.bench_guards", description=__doc__)
    return parser.parse_args(argv)


def run(argv: Sequence[str] = ()) -> list[BenchRow]:
    """For `make bench` (evals/bench.py): parses `argv` only, never the child's `sys.argv`."""
    parse_args(argv)
    return rows(measure())


def main(argv: list[str]) -> None:
    parse_args(argv)
    table = Table(title="guard latency against generation, measured in one run")
    for column in ("measure", "guardrag", "baseline", "ratio", "note"):
        table.add_column(column)
    for row in rows(measure()):
        table.add_row(row.measure, row.guardrag, row.baseline, row.ratio, row.target)
    Console().print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
