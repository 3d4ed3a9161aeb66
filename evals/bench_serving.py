"""`make bench-serving`: serving figures, each against a baseline measured in the same run.

- 8 concurrent chats' wall time ÷ one chat's (the same 8 questions asked one at a time):
  at most 2 means our code does not serialise vLLM's batching.
- The router's milliseconds per call against the query embedding it starts from.
- A cache hit's latency against the miss that stored it.
- Failover: the gap in a stream when its vLLM server is killed, against the stream's median
  gap between tokens (two real vLLM OpenAI servers on loopback, a small random model).

Run: `python -m evals.bench_serving` (about 3-5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evals.bench import BenchRow
from ingest.run import build_ingest_parts, ingest_folder
from rag.cache import AnswerCache
from rag.compose import build_pipeline, build_pool, shutdown_engines, start_engines
from rag.pipeline import Conversation, Pipeline
from rag.schema import ChatMessage
from rag.settings import ModelEndpoint, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "What is the minimum password length?",
    "How many days a week may staff work remotely?",
    "Who approves travel expenses?",
    "How long does the lantern battery last?",
    "How do I report a lost laptop?",
    "How many days of annual leave do new staff get?",
    "What must a supplier sign before starting work?",
    "When are expense reports due?",
]
MAX_TOKENS = 48


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wall(pipeline: Pipeline, questions: list[str]) -> float:
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(pipeline.ask(q, Conversation(user=f"u{i}")) for i, q in enumerate(questions))
    )
    assert all(a.status == "answered" for a in answers), [a.text for a in answers]
    return time.perf_counter() - started


async def concurrency_rows(pipeline: Pipeline) -> list[BenchRow]:
    await _wall(pipeline, QUESTIONS[:1])  # warm-up: kernels, tokenizer, first-request costs
    one_at_a_time = [await _wall(pipeline, [q]) for q in QUESTIONS]
    together = await _wall(pipeline, QUESTIONS)
    single = statistics.mean(one_at_a_time)
    ratio = together / single
    return [
        BenchRow(
            "8 concurrent chats ÷ one chat (wall)",
            f"{together:.1f} s for 8",
            f"{single:.1f} s for 1 (mean of the 8 alone)",
            f"{ratio:.2f}×",
            "≤ 2",
            ratio <= 2,
        )
    ]


def router_rows(pipeline: Pipeline) -> list[BenchRow]:
    embedder, router = pipeline.stages.embedder, pipeline.stages.router
    texts = [f"{q} (variant {i})" for i in range(25) for q in QUESTIONS]
    embed_ms, route_ms = [], []
    for text in texts:
        started = time.perf_counter()
        embedder.embed_query("x " + text)
        embed_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        router.route("y " + text)  # a question the embedder has not seen: no cached vector
        route_ms.append((time.perf_counter() - started) * 1000)
    route_p50, embed_p50 = statistics.median(route_ms), statistics.median(embed_ms)
    return [
        BenchRow(
            "router per call (p50 / p95)",
            f"{route_p50:.1f} / {_percentile(route_ms, 0.95):.1f} ms",
            f"{embed_p50:.1f} ms query embedding alone",
            f"{route_p50 / embed_p50:.2f}×",
        )
    ]


async def cache_rows(pipeline: Pipeline) -> list[BenchRow]:
    cached = Pipeline(
        pipeline.settings,
        replace(pipeline.stages, cache=AnswerCache(3600, 1000, semantic_threshold=0.92)),
    )
    misses, hits = [], []
    for question in QUESTIONS:
        miss = await cached.ask(question, Conversation(user="bench"))
        hit = await cached.ask(question, Conversation(user="bench"))
        stage = next(s for s in hit.stages if s.name == "cache")
        if not stage.detail.startswith("hit"):
            # Only answers are cached (not refusals, not PII-bearing questions).
            print(f"not cached: {question!r}: {miss.status}, {stage.detail}", file=sys.stderr)
            continue
        misses.append(miss.timings_ms["total"])
        hits.append(hit.timings_ms["total"])
    hit_p50, miss_p50 = statistics.median(hits), statistics.median(misses)
    return [
        BenchRow(
            "cache hit latency (p50)",
            f"{hit_p50:.0f} ms",
            f"{miss_p50:.0f} ms for the miss",
            f"{hit_p50 / miss_p50:.3f}×",
        )
    ]


async def failover_rows(settings: Settings, work: Path) -> list[BenchRow]:
    # The servers and the small model are the tests' own helpers: real vLLM, CPU.
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import tiny_llama
    from tests.vllm_servers import start_vllm_servers

    model = tiny_llama(work / "tiny", never_ends=True, hidden_size=768, layers=6)
    servers = start_vllm_servers(model, "tiny", 2, work)
    try:
        endpoint = ModelEndpoint(model="tiny", backend="openai", urls=tuple(s.url for s in servers))
        generation = settings.generation.model_copy(update={"models": {"tiny": endpoint}})
        pool = build_pool(settings.model_copy(update={"generation": generation}))
        arrivals: list[float] = []
        killed_at = 0.0
        messages = [ChatMessage("user", "hello")]
        async for _ in pool.stream("tiny", messages, 200, 0.0):
            arrivals.append(time.perf_counter())
            if len(arrivals) == 20:
                busiest = max(pool.models["tiny"].states, key=lambda s: s.in_flight)
                victim = next(s for s in servers if s.url == busiest.replica.where)
                killed_at = time.perf_counter()
                victim.kill()
        gaps = [b - a for a, b in itertools.pairwise(arrivals[:20])]
        failover_s = arrivals[20] - killed_at
    finally:
        for server in servers:
            server.stop()
    median_gap = statistics.median(gaps)
    return [
        BenchRow(
            "failover: stream gap when its server is killed",
            f"{failover_s * 1000:.0f} ms",
            f"{median_gap * 1000:.0f} ms median gap between tokens",
            f"{failover_s / median_gap:.1f}×",
        )
    ]


async def measure(pipeline: Pipeline, settings: Settings, work: Path) -> list[BenchRow]:
    rows = await concurrency_rows(pipeline)
    rows += router_rows(pipeline)
    rows += await cache_rows(pipeline)
    rows += await failover_rows(settings, work)
    return rows


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals.bench_serving", description=__doc__)
    return parser.parse_args(argv)


def run(argv: Sequence[str] = ()) -> list[BenchRow]:
    """For `make bench` (evals/bench.py): parses `argv` only, never the child's `sys.argv`."""
    parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="guardrag-bench-serving-") as tmp:
        work = Path(tmp)
        base = load_settings("local", data_dir=work / "data")
        generation = base.generation.model_copy(update={"max_tokens": MAX_TOKENS})
        settings = base.model_copy(update={"generation": generation})
        parts = build_ingest_parts(settings)
        ingest_folder(ROOT / "examples", parts)
        built = build_pipeline(settings)
        # The concurrency figure measures generation, not the cache.
        pipeline = Pipeline(built.settings, replace(built.stages, cache=None))
        start_engines(pipeline)

        async def main() -> list[BenchRow]:
            try:
                return await measure(pipeline, settings, work)
            finally:
                shutdown_engines()

        return asyncio.run(main())


def main() -> None:
    parse_args(sys.argv[1:])
    table = Table(title="serving, measured in one run")
    for column in ("measure", "guardrag", "baseline", "ratio", "target", "met"):
        table.add_column(column)
    for row in run():
        met = "" if row.met is None else ("yes" if row.met else "NO")
        table.add_row(row.measure, row.guardrag, row.baseline, row.ratio, row.target, met)
    Console().print(table)


if __name__ == "__main__":
    main()
