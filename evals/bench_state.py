"""`python -m evals.bench_state`: what a request pays for each shared store (issue 19), against
the in-process store it replaces, measured in the same run.

- A history write (one question and its answer appended to a conversation): PostgreSQL on
  loopback against the SQLite file that is the default.
- A rate-limit check (one `hit` of the API's moving window): Redis against `memory://`.
- An answer-cache lookup that hits: Redis against the in-process cache.

PostgreSQL and Redis are started from Debian's packages on loopback, as the tests do
(`apt-get install -y postgresql redis-server`); across a network each round trip adds the
network's latency, which loopback does not show.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from limits import parse as parse_rate
from limits.strategies import MovingWindowRateLimiter
from rich.console import Console
from rich.table import Table

from evals.bench import BenchRow
from evals.local_engines import new_database, postgres_server, redis_server
from evals.scoring import percentile
from guardrails.verdict import Verdict
from rag.cache import AnswerCache, CachedAnswer, CacheKey, RedisAnswerCache
from rag.schema import Citation, Route
from rag.settings import load_settings
from rag.shared_state import rate_limit_storage, redis_client
from ui.history import HistoryStore, StoredTurn


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals.bench_state")
    parser.add_argument("--repeats", type=int, default=500, help="timed calls per store")
    return parser.parse_args(list(argv))


def timings_ms(call: Callable[[int], object], repeats: int) -> list[float]:
    for i in range(min(20, repeats)):  # warm: pools connected, scripts loaded
        call(-1 - i)
    measured = []
    for i in range(repeats):
        started = time.perf_counter()
        call(i)
        measured.append((time.perf_counter() - started) * 1000)
    return measured


def row(measure: str, shared: list[float], local: list[float]) -> BenchRow:
    def shown(values: list[float]) -> str:
        return f"{percentile(values, 50):.3f} / {percentile(values, 95):.3f} ms"

    ratio = statistics.median(shared) / statistics.median(local)
    p95 = percentile(shared, 95) / percentile(local, 95)
    return BenchRow(measure, shown(shared), shown(local), f"p50 {ratio:.2f}x, p95 {p95:.2f}x")


def history_write(location: Path | str, repeats: int) -> list[float]:
    history = HistoryStore(location)
    conversation = history.create("bench", "How many remote days?")
    turns = [
        StoredTurn("user", "How many days a week may <PERSON_1> work remotely?"),
        StoredTurn("assistant", "Up to three days a week [1].", "req"),
    ]
    try:
        return timings_ms(lambda _: history.append("bench", conversation, turns), repeats)
    finally:
        history.close()


def limit_check(storage_uri: str, work: Path, repeats: int) -> list[float]:
    settings = load_settings("local", data_dir=work, api={"rate_limit_storage": storage_uri})
    limiter = MovingWindowRateLimiter(rate_limit_storage(settings))
    # The API's default allowance, over many keys so none runs out while being timed.
    rate = parse_rate("60/minute")
    return timings_ms(lambda i: limiter.hit(rate, f"api:key-{i % 97}"), repeats)


def cache_hit(cache: AnswerCache, repeats: int) -> list[float]:
    key = CacheKey("bench", "how many remote days", "document_qa", "m", ("c1", "c2"), "ctx")
    answer = CachedAnswer(
        "Up to three days a week [1].",
        Route("document_qa", "m", 0.9, "keywords"),
        (Citation(1, "c1", "remote.md", "Remote work", None, 0.03, "Three days."),),
        Verdict("llama_guard", "allow"),
        time.time(),
    )
    cache.put(key, None, answer)
    return timings_ms(lambda _: cache.get(key, None), repeats)


def run(argv: Sequence[str] = ()) -> list[BenchRow]:
    args = parse_args(argv)
    n = args.repeats
    with (
        tempfile.TemporaryDirectory(prefix="guardrag-bench-state-") as tmp,
        # Durable, as a deployment runs it: each commit waits for its fsync, as SQLite's does.
        postgres_server(durable=True) as postgres,
        redis_server() as redis_url,
    ):
        work = Path(tmp)
        base = redis_url.rsplit("/", 1)[0]
        rows = [
            row(
                "history write (PostgreSQL vs SQLite)",
                history_write(new_database(postgres), n),
                history_write(work / "history.sqlite", n),
            ),
            row(
                "rate-limit check (Redis vs memory)",
                limit_check(f"{base}/1", work, n),
                limit_check("memory://", work, n),
            ),
        ]
        shared_cache = RedisAnswerCache(redis_client(f"{base}/0"), 3600, None)
        rows.append(
            row(
                "answer-cache hit (Redis vs memory)",
                cache_hit(shared_cache, n),
                cache_hit(AnswerCache(3600, 1000, None), n),
            )
        )
        return rows


def main() -> None:
    parse_args(sys.argv[1:])
    table = Table(title="shared state, p50 / p95 per call, measured in one run")
    for column in ("measure", "shared store", "in-process", "ratio"):
        table.add_column(column)
    for measured in run(sys.argv[1:]):
        table.add_row(measured.measure, measured.guardrag, measured.baseline, measured.ratio)
    Console().print(table)


if __name__ == "__main__":
    main()
