"""The model pool against real vLLM OpenAI servers on loopback (CPU, a small random Llama that
never stops before max_tokens, about 60 tokens/s here): least-busy choice from vLLM's own
metrics, failover when a replica is killed mid-answer, fallbacks, the circuit breaker and the
bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from rag.compose import build_pool
from rag.generator import ModelUnavailable, ReplicaLoad, parse_vllm_load
from rag.pool import CircuitBreaker, ModelPool, PoolSaturated, Served
from rag.schema import ChatMessage
from rag.settings import ModelEndpoint, PoolSettings, Settings
from tests.tiny_models import tiny_llama
from tests.vllm_servers import VLLMServer, free_port, start_vllm_servers

pytestmark = pytest.mark.slow

QUESTION = [ChatMessage("user", "How many remote days are allowed?")]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VLLMServer]]:
    # 768 wide and 6 deep: slow enough per token that a server's event loop still answers
    # /metrics while it generates (a 2-layer toy starves it on two cores).
    model_dir = tiny_llama(
        tmp_path_factory.mktemp("tiny-long"), never_ends=True, hidden_size=768, layers=6
    )
    started = start_vllm_servers(model_dir, "tiny", 2, tmp_path_factory.mktemp("vllm-logs"))
    yield started
    for server in started:
        server.stop()


def pool_settings(settings: Settings, models: dict[str, ModelEndpoint], **pool: object) -> Settings:
    generation = settings.generation.model_copy(
        update={"models": models, "pool": PoolSettings(**pool)}  # type: ignore[arg-type]
    )
    return settings.model_copy(update={"generation": generation})


def tiny(urls: list[str], **fields: object) -> ModelEndpoint:
    # A replica on a loaded CI machine (two vLLM servers and a held load on two cores) can
    # take over a minute to its first token; these tests fail replicas over by killing them
    # or pointing at dead ports, never by that timeout, so it must not fire by accident.
    fields.setdefault("timeout_s", 600.0)
    return ModelEndpoint(model="tiny", backend="openai", urls=tuple(urls), **fields)  # type: ignore[arg-type]


async def collect(pool: ModelPool, model: str, max_tokens: int, served: list[Served]) -> str:
    parts = [d async for d in pool.stream(model, QUESTION, max_tokens, 0.0, served=served)]
    return "".join(parts)


async def vllm_load(server: VLLMServer, until: Callable[[ReplicaLoad], bool]) -> ReplicaLoad:
    """vLLM's own load reading once `until` holds for it (or the last one after 120 s: a
    server generating on a loaded CPU answers /metrics late)."""
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(timeout=60) as http:
        while True:
            load = parse_vllm_load((await http.get(f"{server.root}/metrics")).text)
            if until(load) or time.monotonic() > deadline:
                return load
            await asyncio.sleep(0.25)


async def running_requests(server: VLLMServer, at_least: int) -> float:
    """vLLM's own count of running requests, once it reaches `at_least`."""
    return (await vllm_load(server, lambda load: load.running >= at_least)).running


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


async def test_vllm_metrics_report_running_requests(servers: list[VLLMServer]) -> None:
    async with held_busy(servers[0], 1):
        running = await running_requests(servers[0], 1)
    assert running == 1.0
    idle = await vllm_load(servers[0], lambda load: load.running == load.waiting == 0)
    assert idle.running == 0.0 and idle.waiting == 0.0


@asynccontextmanager
async def held_busy(server: VLLMServer, requests: int) -> AsyncIterator[None]:
    """Keep `requests` generations running on `server` (from another client than the pool)
    until the block ends: each one that finishes is replaced at once, so the load lasts as
    long as the test needs it, on a fast machine or a loaded one."""
    other = AsyncOpenAI(base_url=server.url, api_key="EMPTY")
    stop = asyncio.Event()

    async def keep_one_running(number: int) -> None:
        while not stop.is_set():
            try:
                await other.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": f"q{number}"}],
                    max_tokens=1500,
                    temperature=0.0,
                )
            except openai.APIError:
                # A loaded server may time a request out: the load goes on with the next.
                await asyncio.sleep(0.1)

    running = [asyncio.create_task(keep_one_running(i)) for i in range(requests)]
    try:
        yield
    finally:
        stop.set()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def test_a_new_request_goes_to_the_replica_vllm_reports_idle(
    provisioned: Settings, servers: list[VLLMServer]
) -> None:
    async with held_busy(servers[0], 3):
        assert await running_requests(servers[0], 3) == 3
        # A server generating on a loaded CPU answers /metrics late (past the probe's
        # timeout, which keeps the last reading): read until the pool has seen the load,
        # which lasts for as long as this takes (144 s in one clean CI run here, 28 s in
        # another: the deadline leaves room for a slower machine, under the 900 s ceiling).
        pool = build_pool(
            pool_settings(
                provisioned, {"tiny": tiny([s.url for s in servers])}, probe_timeout_s=30.0
            )
        )
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline:
            await pool.refresh()
            if pool.models["tiny"].states[0].busyness >= 1:
                break
        # The pool sent replica 0 nothing (in-flight 0): what it reads is vLLM's own count.
        assert pool.models["tiny"].states[0].in_flight == 0
        assert pool.models["tiny"].states[0].busyness >= 1, pool.status()
        # The choice is made from the readings the pool holds at this moment; later
        # readings from a server this busy can arrive late and stale, so one request is
        # the measure.
        served: list[Served] = []
        await collect(pool, "tiny", 8, served)
    assert served[0].where == servers[1].url, pool.status()


async def test_every_replica_is_used_when_requests_arrive_together(
    provisioned: Settings, servers: list[VLLMServer]
) -> None:
    pool = build_pool(pool_settings(provisioned, {"tiny": tiny([s.url for s in servers])}))
    served: list[Served] = []
    await asyncio.gather(*(collect(pool, "tiny", 40, served) for _ in range(6)))
    counts = {s.url: sum(x.where == s.url for x in served) for s in servers}
    assert counts == {servers[0].url: 3, servers[1].url: 3}


async def test_no_replica_reachable_names_the_model_urls_and_what_to_do(
    provisioned: Settings,
) -> None:
    urls = [dead_url(), dead_url()]
    pool = build_pool(pool_settings(provisioned, {"general": tiny(urls)}, backoff_s=0.05))
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as failure:
        await collect(pool, "general", 8, [])
    message = str(failure.value)
    assert "general" in message and urls[0] in message and urls[1] in message
    assert "/health" in message and "generation.models.general.urls" in message
    assert time.monotonic() - started < 5, "a refused connection must fail fast"


async def test_a_model_whose_replicas_are_down_falls_back_to_its_fallback(
    provisioned: Settings, servers: list[VLLMServer]
) -> None:
    models = {
        "code": tiny([dead_url()], fallbacks=("general",)),
        "general": tiny([servers[1].url]),
    }
    pool = build_pool(pool_settings(provisioned, models, backoff_s=0.05))
    served: list[Served] = []
    text = await collect(pool, "code", 16, served)
    assert text and served[0].model == "general" and served[0].failed_over


async def test_the_breaker_opens_after_repeated_failures_and_stops_trying(
    provisioned: Settings,
) -> None:
    pool = build_pool(
        pool_settings(
            provisioned, {"general": tiny([dead_url()])}, breaker_failures=2, retry_rounds=1
        )
    )
    state = pool.models["general"].states[0]
    # No health probe: this test is about the breaker, not about /health marking it down.
    state.health_read_at = float("inf")
    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            await collect(pool, "general", 8, [])
    assert state.breaker.state == "open"
    with pytest.raises(ModelUnavailable, match="breaker open"):
        await collect(pool, "general", 8, [])
    assert state.breaker.consecutive_failures == 2, "an open breaker sends nothing"


def test_a_half_open_trial_that_ends_without_a_verdict_lets_the_next_request_try() -> None:
    breaker = CircuitBreaker(failures=1, reset_s=0.0)
    breaker.failed()
    assert breaker.state == "half-open" and breaker.allows()
    assert breaker.started(), "the first request after the pause is the trial"
    assert not breaker.allows(), "one trial at a time"
    breaker.abandoned()  # e.g. the asker left before the replica answered
    assert breaker.allows()
    breaker.started()
    breaker.succeeded()
    assert breaker.state == "closed"


async def test_queued_requests_go_by_priority_then_arrival(
    provisioned: Settings, servers: list[VLLMServer]
) -> None:
    pool = build_pool(
        pool_settings(provisioned, {"tiny": tiny([servers[1].url])}, max_concurrency_per_replica=1)
    )
    finished: list[str] = []

    async def ask(name: str, priority: int, tokens: int) -> None:
        async for _ in pool.stream("tiny", QUESTION, tokens, 0.0, priority=priority):
            pass
        finished.append(name)

    replicas = pool.models["tiny"]

    async def until(condition: Callable[[], bool]) -> None:
        # Each arrival waits for the pool to show the previous one's effect: fixed sleeps
        # raced the arrivals against a loaded machine.
        async with asyncio.timeout(60):
            while not condition():
                await asyncio.sleep(0.01)

    # The holder keeps the replica's one slot for as long as the test does not read its
    # stream on: the arrivals queue behind it however fast or slow the machine is.
    holder = pool.stream("tiny", QUESTION, 40, 0.0, priority=0)
    await anext(holder)
    assert replicas.states[0].in_flight == 1
    late = []
    for queued, (name, priority) in enumerate(
        [("background", 9), ("urgent", 0), ("newcomer", 9)], start=1
    ):
        late.append(asyncio.create_task(ask(name, priority, 4)))
        await until(functools.partial(lambda n: len(replicas.queue) == n, queued))
    async for _ in holder:
        pass
    finished.append("holder")
    await asyncio.gather(*late)
    assert finished == ["holder", "urgent", "background", "newcomer"]


async def test_a_full_queue_refuses_at_once_and_a_queued_request_waits_its_turn(
    provisioned: Settings, servers: list[VLLMServer]
) -> None:
    pool = build_pool(
        pool_settings(
            provisioned,
            {"tiny": tiny([servers[1].url])},
            max_concurrency_per_replica=1,
            queue_size=1,
            queue_timeout_s=30,
        )
    )
    replicas = pool.models["tiny"]
    # The first request keeps the one slot while its stream is not read on.
    first = pool.stream("tiny", QUESTION, 40, 0.0)
    await anext(first)
    queued = asyncio.create_task(collect(pool, "tiny", 8, []))
    async with asyncio.timeout(60):
        while len(replicas.queue) < 1:
            await asyncio.sleep(0.01)
    with pytest.raises(PoolSaturated, match="already queued"):
        await collect(pool, "tiny", 8, [])
    assert not queued.done(), "the queued request waits while the replica is full"
    rest = [delta async for delta in first]
    assert rest and await queued


async def test_a_queued_request_gives_up_after_queue_timeout_s_and_frees_its_place(
    provisioned: Settings, servers: list[VLLMServer]
) -> None:
    timeout_s = 2.0
    pool = build_pool(
        pool_settings(
            provisioned,
            {"tiny": tiny([servers[1].url])},
            max_concurrency_per_replica=1,
            queue_size=1,
            queue_timeout_s=timeout_s,
        )
    )
    replicas = pool.models["tiny"]
    # The slot is held, by construction, for as long as the holder's stream is not read on.
    holder = pool.stream("tiny", QUESTION, 40, 0.0)
    await anext(holder)
    started = time.monotonic()
    with pytest.raises(PoolSaturated, match=f"within {timeout_s:.0f} s"):
        await collect(pool, "tiny", 8, [])
    waited = time.monotonic() - started
    assert timeout_s <= waited < timeout_s + 30, waited
    # The request that gave up left the queue: the next one may wait in its place.
    assert len(replicas.queue) == 0
    queued = asyncio.create_task(collect(pool, "tiny", 8, []))
    async with asyncio.timeout(60):
        while len(replicas.queue) < 1:
            await asyncio.sleep(0.01)
    rest = [delta async for delta in holder]
    assert rest and await queued


async def test_killing_the_serving_replica_mid_answer_fails_over_and_continues(
    provisioned: Settings, servers: list[VLLMServer], caplog: pytest.LogCaptureFixture
) -> None:
    # Last in this module: it kills one of the module's servers.
    pool = build_pool(pool_settings(provisioned, {"tiny": tiny([s.url for s in servers])}))
    states = pool.models["tiny"].states
    received: list[str] = []
    victim: VLLMServer | None = None
    started = time.monotonic()
    # 1,500 tokens take this model half a minute: the victim is still generating when it is
    # killed at the first delta, however slowly a loaded client reads (with 600 it had once
    # sent the whole answer, finish and all, before a client under two busy loops read its
    # first delta). The test stops reading 40 deltas into the continuation; closing the
    # stream aborts the rest, so the test does not wait for it.
    stream = pool.stream("tiny", QUESTION, 1500, 0.0)
    async with contextlib.aclosing(stream) as deltas:
        async for delta in deltas:
            received.append(delta)
            if len(received) == 1:
                busiest = max(states, key=lambda s: s.in_flight)
                victim = next(s for s in servers if s.url == busiest.replica.where)
                served_before = {s.replica.where: s.served for s in states}
                victim.kill()
            if len(received) > 40:
                break
    elapsed = time.monotonic() - started
    assert victim is not None
    (survivor,) = (s for s in states if s.replica.where != victim.url)
    (killed,) = (s for s in states if s.replica.where == victim.url)
    # Random weights emit partial UTF-8, which vLLM holds back and merges: fewer deltas than
    # tokens. What matters: the other replica took the answer over and went on with it.
    assert len(received) > 40, "the other replica continued the answer"
    assert survivor.served == served_before[survivor.replica.where] + 1
    assert killed.breaker.consecutive_failures == 1
    assert any(
        "failing over" in r.getMessage() and victim.url in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    # Failover waited for no timeout (the endpoint's is 600 s).
    assert elapsed < 120
