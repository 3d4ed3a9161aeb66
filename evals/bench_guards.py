"""Guard latency: each guard's p50/p95 on real prompts, and the guards' share of whole
requests against generation, measured in one run (`make bench-guards`).

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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_ms(check: Callable[[str], object], texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        check(text)
        out.append((time.perf_counter() - started) * 1000)
    return out


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
    output_guard_available: bool


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
        pii = stages.pii
        if pii is None:
            raise SystemExit("the PII guard is off in this profile (guards.off): nothing to time")
        # Warm each guard once: first calls load spaCy pipes and compile regexes.
        pii.check_sync(texts[0])
        stages.injection.check_sync(texts[0])
        per_guard = {
            "pii (Presidio + spaCy)": timed_ms(pii.check_sync, texts),
            "injection (layers as configured)": timed_ms(stages.injection.check_sync, texts),
            "query embedding + search": timed_ms(pipeline.retrieve, texts[:60]),
        }
        requests = asyncio.run(request_timings(pipeline, rounds=2))
    return GuardTimings(len(texts), per_guard, requests, stages.output_guard.available)


def rows(timings: GuardTimings) -> list[BenchRow]:
    """Each guard against generation, the baseline every request pays in the same run."""

    def stage(name: str) -> list[float]:
        return [r.get(name, 0.0) for r in timings.requests]

    guards, generate, total = stage("input_guards"), stage("generate"), stage("total")
    gen_p50 = percentile(generate, 0.5)

    def row(measure: str, values: list[float]) -> BenchRow:
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        return BenchRow(
            f"{measure} p50 / p95 vs generation p50",
            f"{p50:.1f} / {p95:.1f} ms",
            f"{gen_p50:.0f} ms",
            f"{p50 / gen_p50:.2%}" if gen_p50 else "-",
        )

    out = [row(f"{name}, {len(v)} prompts", v) for name, v in timings.per_guard.items()]
    if not timings.output_guard_available:
        out.append(
            BenchRow(
                "llama_guard (output): not on disk, verdict unavailable, policy applied", "", "", ""
            )
        )
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
