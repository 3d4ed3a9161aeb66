"""The model pool: every generation model's replicas, the least busy one chosen per request,
failover to another replica and then to the model's fallbacks, circuit breakers, and a bounded
priority queue when every replica is saturated.

The same pool serves a laptop (one in-process vLLM engine per model) and a cluster (vLLM
OpenAI servers, any number of replicas per model).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from rag.decoding import RepeatedSentenceCut, without_repeated_sentences
from rag.generator import (
    NO_DECODING_CHANGES,
    Generation,
    ModelUnavailable,
    Replica,
    ReplicaFailed,
    ReplicaLoad,
    TokenUsage,
)
from rag.schema import ChatMessage
from rag.settings import Decoding, PoolSettings

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class PoolSaturated(RuntimeError):
    """Every replica of the model is busy and the queue is full (or the wait timed out)."""


class NoUsableReplica(ReplicaFailed):
    """Every replica of a model is unhealthy, has its breaker open, or failed this round."""


class CircuitBreaker:
    """Closed → open after N consecutive failures → half-open after a pause (one trial request
    decides). Written here rather than taken from a library: pybreaker and aiobreaker wrap
    calls, and an async generator that fails mid-stream is not a call they can wrap."""

    def __init__(self, failures: int, reset_s: float) -> None:
        self.failures_to_open = failures
        self.reset_s = reset_s
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.reset_s:
            return "half-open"
        return "open"

    def allows(self) -> bool:
        state = self.state
        return state == "closed" or (state == "half-open" and not self._trial_running)

    def started(self) -> bool:
        """A request goes out; True when it is the half-open trial that decides."""
        if self.state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def abandoned(self) -> None:
        """The trial ended without a verdict (cancelled, closed early, refused as a bad
        request): the next request may try again, instead of the replica staying locked."""
        self._trial_running = False

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self._trial_running = False

    def failed(self) -> None:
        self.consecutive_failures += 1
        self._trial_running = False
        if self.consecutive_failures >= self.failures_to_open or self.opened_at is not None:
            self.opened_at = time.monotonic()


@dataclass
class ReplicaState:
    """What the pool knows of one replica: its breaker, our requests on it, vLLM's load."""

    replica: Replica
    breaker: CircuitBreaker
    in_flight: int = 0
    load: ReplicaLoad | None = None
    load_read_at: float = float("-inf")
    healthy: bool = True
    health_read_at: float = float("-inf")
    health_failures: int = 0
    served: int = 0
    refreshing: asyncio.Task[None] | None = None

    @property
    def busyness(self) -> float:
        """Requests ahead of a new one here. vLLM's running count includes ours but may be
        half a second old; our in-flight count is exact for our own requests."""
        if self.load is None:
            return float(self.in_flight)
        return max(self.in_flight, self.load.running) + self.load.waiting + self.load.kv_cache_usage


@dataclass(order=True)
class _Waiter:
    priority: int
    sequence: int
    future: asyncio.Future[None] = field(compare=False)


class PrioritySlots:
    """A bounded queue of requests waiting for a free replica: lower priority numbers go
    first, then first come first served. Hand-written: asyncio has no priority semaphore."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[_Waiter] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    async def wait(self, priority: int, timeout_s: float) -> None:
        if len(self._heap) >= self.size:
            raise PoolSaturated(f"{len(self._heap)} requests already queued (limit {self.size})")
        waiter = _Waiter(priority, next(self._sequence), asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter.future
        except TimeoutError as exc:
            raise PoolSaturated(f"no replica became free within {timeout_s:.0f} s") from exc
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Woken and cancelled at once: pass the wake-up on, or a slot goes unused.
                self.wake_next()
            raise
        finally:
            if waiter in self._heap:
                self._heap.remove(waiter)
                heapq.heapify(self._heap)

    def wake_next(self) -> None:
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if not waiter.future.done():
                waiter.future.set_result(None)
                return


@dataclass(frozen=True)
class Served:
    """Which model and replica answered a call, and what failed on the way."""

    model: str
    where: str
    failures: tuple[str, ...] = ()

    @property
    def failed_over(self) -> bool:
        return bool(self.failures)


class ModelReplicas:
    """All replicas of one model."""

    def __init__(
        self,
        model: str,
        replicas: Sequence[Replica],
        limits: PoolSettings,
        decoding: Decoding = NO_DECODING_CHANGES,
    ) -> None:
        if not replicas:
            raise ModelUnavailable(f"model {model} has no replicas (no urls in the profile)")
        self.model = model
        self.limits = limits
        self.decoding = decoding
        self.states = [
            ReplicaState(r, CircuitBreaker(limits.breaker_failures, limits.breaker_reset_s))
            for r in replicas
        ]
        self.queue = PrioritySlots(limits.queue_size)

    @property
    def where(self) -> str:
        return ", ".join(s.replica.where for s in self.states)

    async def _refresh(self, state: ReplicaState) -> None:
        now = time.monotonic()
        reads = []
        if now - state.health_read_at >= self.limits.health_refresh_s:
            state.health_read_at = now
            reads.append(self._read_health(state))
        if now - state.load_read_at >= self.limits.load_refresh_s:
            state.load_read_at = now
            reads.append(self._read_load(state))
        await asyncio.gather(*reads)

    @staticmethod
    async def _read_health(state: ReplicaState) -> None:
        # One failed probe can be a busy server answering late: two in a row mark it down.
        if await state.replica.healthy():
            state.health_failures = 0
            state.healthy = True
        else:
            state.health_failures += 1
            state.healthy = state.health_failures < 2

    @staticmethod
    async def _read_load(state: ReplicaState) -> None:
        load = await state.replica.load()
        if load is not None:  # a reading that failed keeps the last one
            state.load = load

    async def refresh(self) -> None:
        """Read every replica's health and load now (at start-up, and in tests)."""
        for state in self.states:
            state.health_read_at = state.load_read_at = float("-inf")
        await asyncio.gather(*(self._refresh(s) for s in self.states))

    def _refresh_in_background(self, state: ReplicaState) -> None:
        # A request never waits for metrics: a busy vLLM server can take seconds to answer
        # /metrics (its event loop is streaming), so requests use the last reading.
        if state.refreshing is None or state.refreshing.done():
            state.refreshing = asyncio.create_task(self._refresh(state))

    def usable(self, exclude: set[int]) -> list[ReplicaState]:
        for state in self.states:
            self._refresh_in_background(state)
        return [
            s
            for i, s in enumerate(self.states)
            if i not in exclude and s.healthy and s.breaker.allows()
        ]

    def least_busy(self, exclude: set[int]) -> ReplicaState | None:
        """The usable replica with room and the fewest requests ahead; None if none has room."""
        limit = self.limits.max_concurrency_per_replica
        with_room = [s for s in self.usable(exclude) if s.in_flight < limit]
        if not with_room:
            return None
        return min(with_room, key=lambda s: (s.busyness, s.served))

    @asynccontextmanager
    async def slot(self, priority: int, exclude: set[int]) -> AsyncIterator[ReplicaState]:
        """A replica with room for one more request, waiting in the priority queue while all
        usable replicas are full."""
        deadline = time.monotonic() + self.limits.queue_timeout_s
        woken = False
        while True:
            if not self.usable(exclude):
                raise NoUsableReplica(f"no usable replica of {self.model} ({self._states_text()})")
            state = self.least_busy(exclude)
            # A newcomer does not jump the queue: while others wait, it waits its turn.
            if state is not None and (woken or not len(self.queue)):
                break
            await self.queue.wait(priority, max(0.0, deadline - time.monotonic()))
            woken = True
        state.in_flight += 1
        state.served += 1
        trial = state.breaker.started()
        try:
            yield state
        finally:
            state.in_flight -= 1
            if trial:
                state.breaker.abandoned()  # no-op when the trial already succeeded or failed
            self.queue.wake_next()

    def _states_text(self) -> str:
        return "; ".join(
            f"{s.replica.where}: {'healthy' if s.healthy else 'unhealthy'}, "
            f"breaker {s.breaker.state}"
            for s in self.states
        )

    def shutdown(self) -> None:
        for state in self.states:
            state.replica.shutdown()


class ModelPool:
    """Every model's replicas, and the fallbacks to try when a model's replicas all fail."""

    def __init__(
        self,
        models: Mapping[str, ModelReplicas],
        fallbacks: Mapping[str, Sequence[str]],
        limits: PoolSettings,
    ) -> None:
        for model, chain in fallbacks.items():
            for fallback in chain:
                if fallback not in models:
                    raise ValueError(
                        f"generation.models.{model}.fallbacks names {fallback!r}, which is not "
                        f"in generation.models ({', '.join(models)})"
                    )
        self.models = dict(models)
        self.fallbacks = {name: tuple(chain) for name, chain in fallbacks.items()}
        self.limits = limits

    def __contains__(self, model: object) -> bool:
        return model in self.models

    def _chain(self, model: str) -> tuple[str, ...]:
        if model not in self.models:
            raise ModelUnavailable(
                f"model {model!r} is not in generation.models ({', '.join(self.models)})"
            )
        return (model, *(f for f in self.fallbacks.get(model, ()) if f != model))

    def _unavailable(self, model: str, failures: list[str]) -> ModelUnavailable:
        tried = ", ".join(f"{m} at {self.models[m].where}" for m in self._chain(model))
        return ModelUnavailable(
            f"model {model} could not answer (tried {tried}): {'; '.join(failures[-4:])}. "
            "Check that its vLLM servers are running and reachable (their /health), or fix "
            f"generation.models.{model}.urls in the profile"
        )

    async def _rounds(self, replicas: ModelReplicas) -> AsyncIterator[set[int]]:
        """Retry rounds over one model's replicas, with exponential backoff between rounds.
        Each round yields the set of replicas that failed in it, for the caller to fill.
        Hand-written rather than tenacity: its attempt manager swallows GeneratorExit,
        which a streamed answer closed early must propagate."""
        for round_number in range(self.limits.retry_rounds):
            if round_number:
                await asyncio.sleep(min(2.0, self.limits.backoff_s * 2 ** (round_number - 1)))
            failed: set[int] = set()
            while len(failed) < len(replicas.states):
                before = len(failed)
                yield failed
                if len(failed) == before:
                    return  # the caller neither succeeded nor marked a failure: stop

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        priority: int = 0,
        served: list[Served] | None = None,
        usage: TokenUsage | None = None,
    ) -> AsyncGenerator[str, None]:
        """Stream an answer from the least busy replica of `model`, failing over to its other
        replicas and then to its fallbacks. A replica that dies mid-answer is replaced by
        another that continues the same answer. `served` (if given) receives who answered,
        `usage` the token counts. A PromptTooLong is not retried anywhere: it passes up."""
        failures: list[str] = []
        shown = ""
        deltas = 0
        for candidate in self._chain(model):
            if shown:
                # Text from `model` is already shown: another model cannot continue it.
                break
            replicas = self.models[candidate]
            decoding = replicas.decoding
            limit = min(max_tokens, decoding.max_tokens or max_tokens)
            # One cut for the whole answer: a continuation after failover goes on with it.
            cut = RepeatedSentenceCut() if decoding.cut_repeated_sentence else None
            async for failed in self._rounds(replicas):
                try:
                    async with replicas.slot(priority, failed) as state:
                        try:
                            # vLLM streams about one token per delta: a continuation
                            # asks only for what the answer has left.
                            budget = max(1, limit - deltas)
                            replica_stream = state.replica.stream(
                                messages,
                                budget,
                                temperature,
                                prefix=shown,
                                usage=usage,
                                decoding=decoding,
                            )
                            # Closing this stream early (the asker left, an unsafe window,
                            # a repeated sentence) closes the replica's at once, which
                            # aborts its generation.
                            async with contextlib.aclosing(replica_stream) as replica_deltas:
                                async for delta in replica_deltas:
                                    shown += delta
                                    deltas += 1
                                    if cut is None:
                                        yield delta
                                        continue
                                    visible, repeats = cut.feed(delta)
                                    if visible:
                                        yield visible
                                    if repeats:
                                        break
                            if cut is not None and (held := cut.finish()):
                                yield held
                        except ReplicaFailed:
                            state.breaker.failed()
                            failed.add(replicas.states.index(state))
                            raise
                        state.breaker.succeeded()
                except ReplicaFailed as exc:
                    failures.append(str(exc))
                    log.warning("model %s: %s; failing over", candidate, exc)
                    if isinstance(exc, NoUsableReplica):
                        # Nothing left to try this round; the next one comes after backoff.
                        failed.update(range(len(replicas.states)))
                    continue
                if served is not None:
                    served.append(Served(candidate, state.replica.where, tuple(failures)))
                return
        raise self._unavailable(model, failures)

    async def answer(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        priority: int = 0,
    ) -> tuple[Generation, Served]:
        """A whole answer with its confidence, with the same failover as `stream`."""

        async def ask(replica: Replica, decoding: Decoding) -> Generation:
            limit = min(max_tokens, decoding.max_tokens or max_tokens)
            generation = await replica.answer(messages, limit, temperature, decoding=decoding)
            if not decoding.cut_repeated_sentence:
                return generation
            return Generation(without_repeated_sentences(generation.text), generation.confidence)

        return await self._call(model, priority, ask)

    async def complete(
        self, model: str, prompt: str, max_tokens: int, priority: int = 0
    ) -> tuple[str, Served]:
        # A raw completion (Llama Guard's verdict) is asked exactly: no decoding changes.
        return await self._call(model, priority, lambda r, _: r.complete(prompt, max_tokens))

    async def _call(
        self, model: str, priority: int, request: Callable[[Replica, Decoding], Awaitable[_T]]
    ) -> tuple[_T, Served]:
        failures: list[str] = []
        for candidate in self._chain(model):
            replicas = self.models[candidate]
            async for failed in self._rounds(replicas):
                try:
                    async with replicas.slot(priority, failed) as state:
                        try:
                            text = await request(state.replica, replicas.decoding)
                        except ReplicaFailed:
                            state.breaker.failed()
                            failed.add(replicas.states.index(state))
                            raise
                        state.breaker.succeeded()
                except ReplicaFailed as exc:
                    failures.append(str(exc))
                    if isinstance(exc, NoUsableReplica):
                        # Nothing left to try this round; the next one comes after backoff.
                        failed.update(range(len(replicas.states)))
                    continue
                return text, Served(candidate, state.replica.where, tuple(failures))
        raise self._unavailable(model, failures)

    def status(self) -> dict[str, list[dict[str, object]]]:
        """Each replica's health, breaker and load, for /healthz and `guardrag models list`."""
        return {
            name: [
                {
                    "where": s.replica.where,
                    "healthy": s.healthy,
                    # Its latest health probe succeeded (`healthy` forgives one failure,
                    # for routing around a busy server; readiness does not).
                    "answering": s.health_failures == 0,
                    "breaker": s.breaker.state,
                    "in_flight": s.in_flight,
                    "running": None if s.load is None else s.load.running,
                    "waiting": None if s.load is None else s.load.waiting,
                }
                for s in replicas.states
            ]
            for name, replicas in self.models.items()
        }

    async def refresh(self) -> None:
        await asyncio.gather(*(replicas.refresh() for replicas in self.models.values()))

    def shutdown(self) -> None:
        for replicas in self.models.values():
            replicas.shutdown()
