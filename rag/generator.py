"""One replica of a generation model: a vLLM engine in this process, or one vLLM OpenAI server.

Both stream chat answers and complete raw prompts (Llama Guard builds its own). Choosing among
replicas, retrying and failing over belong to the model pool (rag/pool.py), not here.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import httpx2

from rag.schema import ChatMessage
from rag.settings import Decoding


class ModelUnavailable(RuntimeError):
    """The model cannot answer now; the message names it, where it was tried, and what to do."""


class PromptTooLong(ModelUnavailable):
    """The prompt does not fit the model's context. Another replica, a retry or a fallback
    would refuse it the same way, so the pool passes it straight up (it is no ReplicaFailed):
    the asker must send less."""

    def __init__(
        self, model: str, max_model_len: int | None, prompt_tokens: int | None, where: str
    ) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.prompt_tokens = prompt_tokens
        size = "" if prompt_tokens is None else f" of {prompt_tokens} tokens"
        limit = "its context" if max_model_len is None else f"max_model_len {max_model_len}"
        super().__init__(
            f"the prompt{size} does not fit model {model} at {where} ({limit}, the answer "
            "included): shorten the question or earlier turns, or lower retrieval.top_k"
        )


class ReplicaFailed(RuntimeError):
    """One replica failed one request (connection refused or reset, timeout, server error).
    The pool tries another replica; the message names the replica."""


@dataclass(frozen=True)
class ReplicaLoad:
    """vLLM's own view of how busy a replica is, from its Prometheus metrics."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0


@dataclass
class TokenUsage:
    """Tokens one generation used, filled in by the replica while it streams (hence mutable):
    the prompt once (a continuation after failover resends it, and is not counted again),
    the completion as tokens arrive."""

    prompt_tokens: int | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class Generation:
    """A whole answer and how sure the model was: exp(mean log-probability of its tokens)."""

    text: str
    confidence: float


NO_DECODING_CHANGES = Decoding()


def sampling_options(decoding: Decoding) -> dict[str, Any]:
    """vLLM's sampling options (SamplingParams fields, and the same names in an OpenAI
    server's request body) for what `decoding` changes; nothing when it changes nothing, so a
    model left alone is asked exactly as before."""
    options: dict[str, Any] = {}
    if decoding.repetition_penalty != 1.0:
        options["repetition_penalty"] = decoding.repetition_penalty
    if decoding.frequency_penalty != 0.0:
        options["frequency_penalty"] = decoding.frequency_penalty
    if decoding.stop:
        options["stop"] = list(decoding.stop)
    return options


class Replica(Protocol):
    model: str  # the pool's name for the model, e.g. "general"
    where: str  # a URL, or "in-process"

    def stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        prefix: str = "",
        usage: TokenUsage | None = None,
        decoding: Decoding = NO_DECODING_CHANGES,
    ) -> AsyncGenerator[str, None]:
        """Stream the answer's text. With `prefix`, continue an answer that another replica
        started (after a failover mid-stream) instead of starting over. `usage`, if given,
        receives the token counts."""
        ...

    async def answer(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        decoding: Decoding = NO_DECODING_CHANGES,
    ) -> Generation:
        """The whole answer at once, with its confidence (for fan-out and merging)."""
        ...

    async def complete(self, prompt: str, max_tokens: int) -> str: ...

    async def healthy(self) -> bool: ...

    async def load(self) -> ReplicaLoad | None: ...

    def shutdown(self) -> None: ...


_request_ids = itertools.count()


class VLLMInProcess:
    """One vLLM AsyncLLM engine in this process. It starts on first use (about 30-50 s for
    SmolLM2 on two cores), or earlier through `start()`."""

    where = "in-process"

    def __init__(
        self, model: str, path: Path, max_model_len: int, kv_cache_gib: float = 1.0
    ) -> None:
        self.model = model
        self.path = path
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self._engine: Any = None
        self._failure: str | None = None

    def start(self) -> None:
        if self._engine is not None:
            return
        if self._failure is not None:
            # A failed start is not retried on every question: it costs tens of seconds.
            raise ModelUnavailable(self._failure)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            self._engine = AsyncLLM.from_engine_args(
                AsyncEngineArgs(
                    model=str(self.path),
                    served_model_name=[self.model],
                    # float32: the CPU build has no fast half-precision path for these models.
                    dtype="float32",
                    max_model_len=self.max_model_len,
                    # CUDA graphs and compilation do not apply on CPU and cost start-up time.
                    enforce_eager=True,
                    disable_log_stats=True,
                    # An explicit KV-cache size. Without it vLLM's CPU backend wants 92 % of
                    # the machine's memory free at start, so a second engine (Llama Guard
                    # beside the generator) could never start.
                    kv_cache_memory_bytes=int(self.kv_cache_gib * 2**30),
                )
            )
        except (RuntimeError, ValueError, OSError) as exc:
            self._failure = f"vLLM could not start model {self.model} from {self.path}: {exc}"
            raise ModelUnavailable(self._failure) from exc

    def _ensure_started(self) -> None:
        try:
            self.start()
        except ModelUnavailable as exc:
            # For the pool, an engine that cannot start is a failed replica: its fallbacks
            # answer instead.
            raise ReplicaFailed(f"{self.where}: {exc}") from exc

    def _prompt(self, messages: Sequence[ChatMessage], prefix: str) -> str:
        tokenizer = self._engine.get_tokenizer()
        prompt: str = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        return prompt + prefix

    def _fit(self, prompt: str, max_tokens: int) -> tuple[int, int]:
        """The answer's token budget, and the prompt's own token count."""
        # Leave room for the answer: vLLM rejects a prompt + max_tokens over max_model_len.
        prompt_tokens = len(self._engine.get_tokenizer().encode(prompt))
        room = self.max_model_len - prompt_tokens
        if room < 16:
            raise PromptTooLong(self.model, self.max_model_len, prompt_tokens, self.where)
        return min(max_tokens, room), prompt_tokens

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        prefix: str = "",
        usage: TokenUsage | None = None,
        decoding: Decoding = NO_DECODING_CHANGES,
    ) -> AsyncGenerator[str, None]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._ensure_started()
        prompt = self._prompt(messages, prefix)
        budget, prompt_tokens = self._fit(prompt, max_tokens)
        params = SamplingParams(
            temperature=temperature,
            max_tokens=budget,
            output_kind=RequestOutputKind.DELTA,
            **sampling_options(decoding),
        )
        if usage is not None and usage.prompt_tokens is None:
            usage.prompt_tokens = prompt_tokens
        request_id = f"{self.model}-{next(_request_ids)}"
        try:
            async for output in self._engine.generate(prompt, params, request_id=request_id):
                if usage is not None:
                    # DELTA outputs carry only the new tokens' ids.
                    usage.completion_tokens += len(output.outputs[0].token_ids)
                delta = output.outputs[0].text
                if delta:
                    yield delta
        except (RuntimeError, OSError) as exc:
            # vLLM's EngineDeadError and friends: the pool's breaker and fallbacks take over.
            raise ReplicaFailed(f"{self.where} engine for {self.model}: {exc}") from exc

    async def answer(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        decoding: Decoding = NO_DECODING_CHANGES,
    ) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._ensure_started()
        prompt = self._prompt(messages, "")
        budget, _ = self._fit(prompt, max_tokens)
        params = SamplingParams(
            temperature=temperature,
            max_tokens=budget,
            output_kind=RequestOutputKind.FINAL_ONLY,
            logprobs=0,  # the sampled token's own log-probability only
            **sampling_options(decoding),
        )
        request_id = f"{self.model}-{next(_request_ids)}"
        text, cumulative, tokens = "", 0.0, 0
        async for output in self._engine.generate(prompt, params, request_id=request_id):
            completion = output.outputs[0]
            text = completion.text
            cumulative = completion.cumulative_logprob or 0.0
            tokens = len(completion.token_ids)
        return Generation(text, math.exp(cumulative / tokens) if tokens else 0.0)

    async def complete(self, prompt: str, max_tokens: int) -> str:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._ensure_started()
        budget, _ = self._fit(prompt, max_tokens)
        params = SamplingParams(
            temperature=0.0,
            max_tokens=budget,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        text = ""
        request_id = f"{self.model}-{next(_request_ids)}"
        async for output in self._engine.generate(prompt, params, request_id=request_id):
            text = output.outputs[0].text
        return text

    async def healthy(self) -> bool:
        # Not started yet counts as healthy: the first request starts it.
        return self._failure is None and (self._engine is None or not self._engine.errored)

    async def load(self) -> ReplicaLoad | None:
        # The pool's own in-flight count is exact for an engine only this process uses.
        return None

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def _server_root(url: str) -> str:
    """`http://host:8000/v1` → `http://host:8000`: vLLM serves /health and /metrics there."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def parse_vllm_load(metrics_text: str) -> ReplicaLoad:
    """Running and waiting requests and KV-cache use from vLLM's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc",  # the name before vLLM 0.11
            ):
                # Data-parallel servers report one sample per engine: add them up.
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return ReplicaLoad(
        running=values.get("vllm:num_requests_running", 0.0),
        waiting=values.get("vllm:num_requests_waiting", 0.0),
        kv_cache_usage=values.get(
            "vllm:kv_cache_usage_perc", values.get("vllm:gpu_cache_usage_perc", 0.0)
        ),
    )


class OpenAIReplica:
    """One vLLM OpenAI-compatible server serving one model."""

    def __init__(
        self,
        model: str,
        served_name: str,
        url: str,
        api_key: str | None,
        timeout_s: float,
        connect_timeout_s: float,
        probe_timeout_s: float = 2.0,
    ) -> None:
        from openai import AsyncOpenAI

        self.model = model
        self.served_name = served_name
        self.where = url
        self._root = _server_root(url)
        # A dead server must fail in about a second (connect), a stuck one within timeout_s
        # (no token for that long); retries are the pool's (next replica), not the client's.
        timeout = httpx2.Timeout(timeout_s, connect=connect_timeout_s)
        self._client = AsyncOpenAI(
            base_url=url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0
        )
        # Probes run in the background (no request waits for them), and a busy CPU server can
        # answer /metrics late; a probe that gives up keeps the last reading.
        self._probe = httpx.AsyncClient(
            timeout=httpx.Timeout(probe_timeout_s, connect=connect_timeout_s)
        )

    def _failed(self, exc: BaseException) -> ReplicaFailed:
        return ReplicaFailed(f"{self.where}: {type(exc).__name__}: {exc}")

    def _refused(self, exc: BaseException) -> ModelUnavailable:
        """A 400: the request itself is wrong, so no replica will take it. vLLM's answer to a
        prompt over its max_model_len ("This model's maximum context length is N tokens.
        However, your prompt contains M input tokens ...") is a PromptTooLong."""
        message = str(exc)
        if "maximum context length" not in message:
            return ModelUnavailable(f"model {self.model} at {self.where} refused: {exc}")
        limit = re.search(r"maximum context length is (\d+)", message)
        tokens = re.search(r"(?:contains|has) (?:at least )?(\d+) input tokens", message)
        return PromptTooLong(
            self.model,
            int(limit.group(1)) if limit else None,
            int(tokens.group(1)) if tokens else None,
            self.where,
        )

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        prefix: str = "",
        usage: TokenUsage | None = None,
        decoding: Decoding = NO_DECODING_CHANGES,
    ) -> AsyncGenerator[str, None]:
        import openai

        payload: list[dict[str, str]] = [{"role": m.role, "content": m.content} for m in messages]
        # vLLM's server takes its own sampling options beside OpenAI's in the body.
        extra: dict[str, Any] = sampling_options(decoding)
        if prefix:
            # vLLM continues the assistant's unfinished message instead of starting a new one.
            payload.append({"role": "assistant", "content": prefix})
            extra |= {"continue_final_message": True, "add_generation_prompt": False}
        try:
            response = await self._client.chat.completions.create(  # type: ignore[call-overload]
                model=self.served_name,
                messages=payload,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
                # vLLM then ends the stream with a chunk holding the token counts.
                stream_options={"include_usage": True},
                extra_body=extra or None,
            )
            finished = False
            try:
                async for event in response:  # type: ignore[union-attr]  # stream=True
                    if event.usage is not None and usage is not None:
                        if usage.prompt_tokens is None:
                            usage.prompt_tokens = event.usage.prompt_tokens
                        usage.completion_tokens += event.usage.completion_tokens
                    if event.choices and event.choices[0].delta.content:
                        yield event.choices[0].delta.content
                    if event.choices and event.choices[0].finish_reason is not None:
                        finished = True
                if not finished:
                    # A server killed mid-answer can close the connection cleanly (EOF, not
                    # a reset): without a finish reason the answer is cut short, and the pool
                    # must continue it elsewhere, not pass it on as whole.
                    raise ReplicaFailed(
                        f"{self.where}: the stream ended before the answer did (no finish_reason)"
                    )
            finally:
                # Closing the HTTP stream makes vLLM abort the request at once.
                await response.close()  # type: ignore[union-attr]
        except openai.BadRequestError as exc:
            raise self._refused(exc) from exc
        # openai's client runs on httpx2: a reset connection mid-stream surfaces raw.
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise self._failed(exc) from exc

    async def answer(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        decoding: Decoding = NO_DECODING_CHANGES,
    ) -> Generation:
        import openai

        try:
            response = await self._client.chat.completions.create(
                model=self.served_name,
                messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                max_tokens=max_tokens,
                temperature=temperature,
                logprobs=True,
                extra_body=sampling_options(decoding) or None,
            )
        except openai.BadRequestError as exc:
            raise self._refused(exc) from exc
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise self._failed(exc) from exc
        choice = response.choices[0]
        logprobs = [t.logprob for t in (choice.logprobs.content or [])] if choice.logprobs else []
        confidence = math.exp(sum(logprobs) / len(logprobs)) if logprobs else 0.0
        return Generation(choice.message.content or "", confidence)

    async def complete(self, prompt: str, max_tokens: int) -> str:
        import openai

        try:
            response = await self._client.completions.create(
                model=self.served_name, prompt=prompt, max_tokens=max_tokens, temperature=0.0
            )
        except openai.BadRequestError as exc:
            raise self._refused(exc) from exc
        # openai's client runs on httpx2: a reset connection mid-stream surfaces raw.
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise self._failed(exc) from exc
        return response.choices[0].text

    async def healthy(self) -> bool:
        try:
            response = await self._probe.get(f"{self._root}/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def load(self) -> ReplicaLoad | None:
        try:
            response = await self._probe.get(f"{self._root}/metrics")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return parse_vllm_load(response.text)

    def shutdown(self) -> None:
        """Nothing to stop: the servers belong to the cluster."""
