"""Text generation on vLLM: in-process (AsyncLLM, streamed) or vLLM OpenAI servers.

Both backends stream chat answers and complete raw prompts (Llama Guard builds its own).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, Protocol

from rag.schema import ChatMessage


class ModelUnavailable(RuntimeError):
    """The model cannot answer now; the message names it, where it was tried, and what to do."""


class Generator(Protocol):
    name: str

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]: ...

    async def complete(self, prompt: str, max_tokens: int) -> str: ...


_request_ids = itertools.count()


class VLLMInProcess:
    """One vLLM AsyncLLM engine in this process. It starts on first use (about 30-50 s for
    SmolLM2 on two cores), or earlier through `start()`."""

    def __init__(
        self, name: str, path: Path, max_model_len: int, kv_cache_gib: float = 1.0
    ) -> None:
        self.name = name
        self.path = path
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self._engine: Any = None

    def start(self) -> None:
        if self._engine is not None:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        try:
            self._engine = AsyncLLM.from_engine_args(
                AsyncEngineArgs(
                    model=str(self.path),
                    served_model_name=[self.name],
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
            raise ModelUnavailable(
                f"vLLM could not start model {self.name} from {self.path}: {exc}"
            ) from exc

    def _prompt(self, messages: Sequence[ChatMessage]) -> str:
        tokenizer = self._engine.get_tokenizer()
        prompt: str = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        return prompt

    def _fit(self, prompt: str, max_tokens: int) -> int:
        # Leave room for the answer: vLLM rejects a prompt + max_tokens over max_model_len.
        prompt_tokens = len(self._engine.get_tokenizer().encode(prompt))
        room = self.max_model_len - prompt_tokens
        if room < 16:
            raise ModelUnavailable(
                f"prompt of {prompt_tokens} tokens does not fit model {self.name} "
                f"(max_model_len {self.max_model_len}); lower retrieval.top_k"
            )
        return min(max_tokens, room)

    async def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.start()
        prompt = self._prompt(messages)
        params = SamplingParams(
            temperature=temperature,
            max_tokens=self._fit(prompt, max_tokens),
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = f"{self.name}-{next(_request_ids)}"
        async for output in self._engine.generate(prompt, params, request_id=request_id):
            delta = output.outputs[0].text
            if delta:
                yield delta

    async def complete(self, prompt: str, max_tokens: int) -> str:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.start()
        params = SamplingParams(
            temperature=0.0,
            max_tokens=self._fit(prompt, max_tokens),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        text = ""
        request_id = f"{self.name}-{next(_request_ids)}"
        async for output in self._engine.generate(prompt, params, request_id=request_id):
            text = output.outputs[0].text
        return text

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


class OpenAIServer:
    """vLLM OpenAI-compatible servers for one model; replicas are tried in order."""

    def __init__(
        self, name: str, model: str, urls: Sequence[str], api_key: str | None, timeout_s: float
    ) -> None:
        if not urls:
            raise ModelUnavailable(f"model {name} has backend `openai` but no urls in the profile")
        from openai import AsyncOpenAI

        self.name = name
        self.model = model
        self.urls = tuple(urls)
        self._clients = [
            # Retries are ours (next replica), not the client's: a dead replica fails fast.
            AsyncOpenAI(base_url=url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=0)
            for url in self.urls
        ]

    def _unreachable(self, errors: list[str]) -> ModelUnavailable:
        return ModelUnavailable(
            f"model {self.name} ({self.model}) is unreachable at {', '.join(self.urls)}: "
            f"{'; '.join(errors)}. Start its vLLM server "
            f"(python -m vllm.entrypoints.openai.api_server --model … --served-model-name "
            f"{self.model}) or fix generation.models.{self.name}.urls"
        )

    async def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        import openai

        errors = []
        for url, client in zip(self.urls, self._clients, strict=True):
            try:
                response = await client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                )
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            async for event in response:  # type: ignore[union-attr]  # stream=True
                if event.choices and event.choices[0].delta.content:
                    yield event.choices[0].delta.content
            return
        raise self._unreachable(errors)

    async def complete(self, prompt: str, max_tokens: int) -> str:
        import openai

        errors = []
        for url, client in zip(self.urls, self._clients, strict=True):
            try:
                response = await client.completions.create(
                    model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=0.0
                )
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            return response.choices[0].text
        raise self._unreachable(errors)

    def shutdown(self) -> None:
        """Nothing to stop: the servers belong to the cluster."""
