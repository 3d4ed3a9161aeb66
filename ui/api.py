"""The guarded, OpenAI-compatible API: `/v1/chat/completions` (streamed or not), `/v1/models`,
`/healthz`, `/readyz` and `/metrics`.

Every request takes the same guarded path as the chat. Verdicts, citations, the route and
timings travel in an extra `guardrag` field, which the official `openai` client keeps (as
`model_extra`). Under load the API answers 200, 429 (this key's rate limit) or 503 (saturated,
or a model down), never 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from limits import parse as parse_rate
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from rag.generator import PromptTooLong
from rag.multi import ChainStep, MergeStrategy
from rag.pipeline import AskOptions, Conversation, Pipeline, QuestionError
from rag.schema import Answer, ChatMessage, Final, Retraction, StreamEvent, TextDelta
from rag.settings import Settings
from rag.telemetry import PrometheusTelemetry

log = logging.getLogger(__name__)

# The model id that lets the router choose; a name from generation.models fixes the model.
AUTO_MODEL = "guardrag"


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class _ChainStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    instruction: str


class _GuardragOptions(BaseModel):
    """guardrag's own request options, in an extra `guardrag` object (`extra_body`)."""

    model_config = ConfigDict(extra="forbid")
    task_hints: list[str] = Field(default_factory=list)
    top_k: int | None = None
    fan_out: list[str] = Field(default_factory=list)
    merge: MergeStrategy = MergeStrategy.CONSENSUS
    chain: list[_ChainStep] = Field(default_factory=list)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The OpenAI request fields guardrag uses; sampling fields are accepted and ignored
    (the profile decides them, so every answer passes the same checks)."""

    model_config = ConfigDict(extra="allow")
    model: str = AUTO_MODEL
    messages: list[_Message]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    guardrag: _GuardragOptions = Field(default_factory=_GuardragOptions)


def _error(
    status: int,
    message: str,
    kind: str,
    headers: dict[str, str] | None = None,
    code: str | int | None = None,
) -> Response:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status if code is None else code}},
        status_code=status,
        headers=headers,
    )


def _prompt_too_long(exc: BaseException) -> PromptTooLong | None:
    """The generator's PromptTooLong behind `exc`: the exception itself, or the cause of the
    QuestionError the pipeline turns it into."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, PromptTooLong):
            return candidate
    return None


def prompt_too_long_message(error: PromptTooLong, settings: Settings) -> str:
    """What a caller can act on: which model, how much it holds (as configured), and how long
    the prompt was when the generator counted it."""
    model = error.model
    endpoint = settings.generation.models.get(model)
    limit = endpoint.max_model_len if endpoint is not None else error.max_model_len
    tokens = error.prompt_tokens
    size = f"is {tokens} tokens" if tokens is not None else "is longer than that"
    return (
        f"the prompt is too long for model {model}: its context holds {limit} tokens "
        f"(generation.models.{model}.max_model_len, the answer included), and the prompt "
        f"(question, earlier turns and retrieved passages) {size}. Send a shorter question "
        "or fewer earlier turns, or ask with a smaller guardrag.top_k"
    )


def answer_extra(answer: Answer) -> dict[str, Any]:
    """What the API tells a caller beyond the text: never the prompt or pseudonymised text."""
    return {
        "request_id": answer.request_id,
        "status": answer.status,
        "route": None if answer.route is None else asdict(answer.route),
        "verdicts": [
            {k: v for k, v in asdict(verdict).items() if k != "sanitized_text"}
            for verdict in answer.verdicts
        ],
        "citations": [asdict(c) for c in answer.citations],
        "stages": [asdict(s) for s in answer.stages],
        "first_token_ms": answer.first_token_ms,
    }


def usage(answer: Answer) -> dict[str, int] | None:
    """OpenAI's `usage` from the token counts the generator reported, when it did (a cached
    answer or a fan-out has none)."""
    prompt, completion = answer.prompt_tokens, answer.completion_tokens
    if prompt is None or completion is None:
        return None
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(answer: Answer) -> str:
    # OpenAI's own name for text a content filter withheld.
    return "stop" if answer.status == "answered" else "content_filter"


class Admission:
    """Who is asking (from the bearer key), at what rate, and whether there is room."""

    def __init__(self, settings: Settings) -> None:
        self.keys = settings.api.keys
        self.rate = parse_rate(settings.api.rate_limit)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.max_concurrent = settings.api.max_concurrent
        self.in_flight = 0

    def user_for(self, request: Request) -> str | None:
        """The caller's user id (derived from their key), or None when the key is wrong."""
        if not self.keys:
            return "api"
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        # Digests of equal length, every key compared: neither the length nor the position
        # of a key leaks through timing.
        offered = hashlib.sha256(key.encode()).digest()
        matched = None
        for known in self.keys:
            if hmac.compare_digest(offered, hashlib.sha256(known.encode()).digest()):
                matched = known
        if matched is None:
            return None
        return "key-" + hashlib.sha256(f"guardrag-api-user:{matched}".encode()).hexdigest()[:12]

    def refused_too_often(self, request: Request) -> bool:
        """Wrong keys count against the caller's address: guessing keys is rate limited."""
        address = request.client.host if request.client else "unknown"
        return not self.limiter.hit(self.rate, f"refused:{address}")

    def has_room(self) -> bool:
        return self.in_flight < self.max_concurrent

    def within_rate(self, user: str) -> bool:
        """Spends one of the key's requests; False (nothing spent) when none is left."""
        return self.limiter.hit(self.rate, user)

    def rate_left(self, user: str) -> bool:
        """Whether the key could spend a request now, without spending it."""
        return self.limiter.test(self.rate, user)

    def retry_after_s(self, user: str) -> int:
        reset_at, _ = self.limiter.get_window_stats(self.rate, user)
        return max(1, int(reset_at - time.time()) + 1)

    def rate_headers(self, user: str) -> dict[str, str]:
        """OpenAI's names for what is left of the key's allowance."""
        _, remaining = self.limiter.get_window_stats(self.rate, user)
        return {
            "x-ratelimit-limit-requests": str(self.rate.amount),
            "x-ratelimit-remaining-requests": str(remaining),
        }


def build_api(pipeline: Pipeline, settings: Settings, metrics: PrometheusTelemetry) -> FastAPI:
    app = FastAPI(title="guardrag", version="0.1.0", docs_url="/docs")
    admission = Admission(settings)
    pii = pipeline.stages.pii

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # A fault below us (store, model server) must not become a 500 for the caller;
        # the log holds the traceback under this id.
        error_id = uuid.uuid4().hex[:12]
        log.exception("request failed (error id %s)", error_id)
        return _error(503, f"the request could not be served (error id {error_id})", "unavailable")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # Liveness: this process serves. Model replicas' state is reported, not required.
        return {"status": "ok", "models": pipeline.stages.pool.status()}

    @app.get("/readyz")
    async def readyz() -> Response:
        await pipeline.stages.pool.refresh()
        status = pipeline.stages.pool.status()
        ready = all(any(r["healthy"] for r in replicas) for replicas in status.values())
        return JSONResponse({"ready": ready, "models": status}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def refuse(request: Request) -> Response:
        if admission.refused_too_often(request):
            return _error(429, "too many refused keys from this address", "rate_limit_exceeded")
        return _error(401, "a valid bearer key is required", "invalid_api_key")

    def throttled(user: str) -> Response:
        return _error(
            429,
            f"rate limit {settings.api.rate_limit} for this key reached",
            "rate_limit_exceeded",
            {"Retry-After": str(admission.retry_after_s(user)), **admission.rate_headers(user)},
        )

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if admission.user_for(request) is None:
            return refuse(request)
        created = int(time.time())
        ids = [AUTO_MODEL, *pipeline.stages.pool.models]
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": i, "object": "model", "created": created, "owned_by": "guardrag"}
                    for i in ids
                ],
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        user = admission.user_for(request)
        if user is None:
            return refuse(request)
        # Room is checked before the key's allowance is spent: a request refused because
        # the server is full costs the caller nothing. (No await from here to the in-flight
        # count going up, so no other request can take the room in between.)
        if not admission.has_room():
            if not admission.rate_left(user):
                return throttled(user)
            return _error(
                503,
                f"{admission.in_flight} requests in progress (limit {admission.max_concurrent})",
                "overloaded",
                {"Retry-After": "1"},
            )
        if not admission.within_rate(user):
            return throttled(user)
        rate_headers = admission.rate_headers(user)
        admission.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.in_flight -= 1

        try:
            questions = [m for m in body.messages if m.role == "user"]
            if not questions:
                release()
                return _error(400, "messages hold no user message", "invalid_request_error")
            model = None if body.model in (AUTO_MODEL, "auto") else body.model
            extra = body.guardrag
            options = AskOptions(
                task_hints=tuple(extra.task_hints),
                model=model,
                top_k=extra.top_k,
                fan_out=tuple(extra.fan_out),
                merge=extra.merge,
                chain=tuple(ChainStep(step.model, step.instruction) for step in extra.chain),
                priority=settings.api.priority,
            )
            conversation = Conversation(user=user)
            refusal = await _unchecked_text_refusal(body, pipeline)
            if refusal is not None:
                release()
                return _error(400, refusal, "invalid_request_error")
            conversation.turns = await asyncio.to_thread(
                _earlier_turns, body.messages, conversation, pii
            )
            options = replace(
                options,
                chain=tuple(
                    ChainStep(step.model, pii.pseudonymise(step.instruction, conversation.vault)[0])
                    for step in options.chain
                ),
            )
            events = pipeline.stream(questions[-1].text, conversation, options)
            # Read up to the first text (or the end) before answering, so a request that
            # fails early gets its real status instead of a 200 stream holding an error.
            first: list[StreamEvent] = []
            async for event in events:
                first.append(event)
                if isinstance(event, TextDelta | Final):
                    break
        except Exception as exc:
            release()
            too_long = _prompt_too_long(exc)
            if too_long is not None:
                return _error(
                    400,
                    prompt_too_long_message(too_long, settings),
                    "invalid_request_error",
                    code="context_length_exceeded",  # OpenAI's code for the same refusal
                )
            if isinstance(exc, QuestionError):
                return _error(400, str(exc), "invalid_request_error")
            raise
        except BaseException:
            release()
            raise

        final = next((e for e in first if isinstance(e, Final)), None)
        if final is not None and final.answer.status in ("failed", "busy"):
            release()
            return _error(503, final.answer.text, "model_unavailable", {"Retry-After": "2"})
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        model_name = body.model
        if not body.stream:
            try:
                answer = final.answer if final else await _final_answer(events)
            finally:
                release()
            if answer.status in ("failed", "busy"):
                return _error(503, answer.text, "model_unavailable", {"Retry-After": "2"})
            return JSONResponse(
                _completion(completion_id, model_name, answer), headers=rate_headers
            )

        async def sse() -> AsyncIterator[str]:
            try:
                async for line in answer_events():
                    yield line
            except Exception:  # headers are sent: the error goes in the stream
                error_id = uuid.uuid4().hex[:12]
                log.exception("stream failed (error id %s)", error_id)
                error = {
                    "message": f"the answer could not be finished (error id {error_id})",
                    "type": "unavailable",
                    "code": 503,
                }
                yield f"data: {json.dumps({'error': error})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                release()
                # A caller that hangs up mid-answer stops the generation too.
                await events.aclose()

        async def answer_events() -> AsyncIterator[str]:
            yield _chunk(completion_id, model_name, {"role": "assistant", "content": ""})
            async for event in _chain(first, events):
                if isinstance(event, TextDelta):
                    yield _chunk(completion_id, model_name, {"content": event.text})
                elif isinstance(event, Retraction):
                    # Clients that read `guardrag` replace what they showed; the refusal
                    # follows as content with finish_reason content_filter.
                    yield _chunk(
                        completion_id,
                        model_name,
                        {"content": ""},
                        extra={"retracted": True, "reason": event.reason},
                    )
                elif isinstance(event, Final):
                    answer = event.answer
                    if answer.status != "answered":
                        yield _chunk(completion_id, model_name, {"content": answer.text})
                    yield _chunk(
                        completion_id,
                        model_name,
                        {},
                        finish_reason=_finish_reason(answer),
                        extra=answer_extra(answer),
                    )
                    if body.stream_options is not None and body.stream_options.include_usage:
                        yield _usage_chunk(completion_id, model_name, usage(answer))
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers=rate_headers)

    return app


# Earlier turns are pseudonymised on every request: bounded, so one caller cannot occupy
# Presidio (and a core) with a novel.
MAX_TURN_CHARS = 4000


async def _unchecked_text_refusal(body: ChatCompletionRequest, pipeline: Pipeline) -> str | None:
    """Text the caller puts in the prompt besides the question (earlier turns, chain
    instructions) passes the injection check too; the reason it is refused, or None."""
    from guardrails.policy import apply_policy
    from guardrails.verdict import GuardContext

    texts = [m.text for m in body.messages[:-1] if m.role in ("user", "assistant")][-2:]
    texts += [step.instruction for step in body.guardrag.chain]
    policy = pipeline.settings.guards.injection.policy
    for number, text in enumerate(texts, start=1):
        if len(text) > MAX_TURN_CHARS:
            return f"an earlier message or instruction has over {MAX_TURN_CHARS} characters"
        verdict = apply_policy(
            await pipeline.stages.injection.check(text, GuardContext(checked_as="question")),
            policy,
        )
        if verdict.blocks:
            return f"earlier message or instruction {number} was flagged: {verdict.reason}"
    return None


def _earlier_turns(
    messages: list[_Message], conversation: Conversation, pii: Any
) -> list[ChatMessage]:
    """The exchange before the question, pseudonymised with this request's vault so names
    in it get the same placeholders as in the question. Callers' system messages are not
    used: the profile's system prompt is part of the guarded path."""
    turns = [m for m in messages[:-1] if m.role in ("user", "assistant")][-2:]
    return [
        ChatMessage(m.role, pii.pseudonymise(m.text, conversation.vault)[0])  # type: ignore[arg-type]
        for m in turns
    ]


async def _chain(
    first: list[StreamEvent], rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    for event in first:
        yield event
    async for event in rest:
        yield event


async def _final_answer(events: AsyncIterator[StreamEvent]) -> Answer:
    async for event in events:
        if isinstance(event, Final):
            return event.answer
    raise RuntimeError("the pipeline ended without an answer")


def _completion(completion_id: str, model: str, answer: Answer) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": _finish_reason(answer),
            }
        ],
        "usage": usage(answer),
        "guardrag": answer_extra(answer),
    }


def _usage_chunk(completion_id: str, model: str, counts: dict[str, int] | None) -> str:
    """The extra last chunk OpenAI sends for `stream_options.include_usage`: no choices."""
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": counts,
    }
    return f"data: {json.dumps(chunk)}\n\n"


def _chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if extra is not None:
        chunk["guardrag"] = extra
    return f"data: {json.dumps(chunk)}\n\n"
