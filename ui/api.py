"""The guarded, OpenAI-compatible API: `/v1/chat/completions` (streamed or not), `/v1/models`,
`/healthz`, `/readyz`, `/metrics` and the API's docs.

Every request takes the same guarded path as the chat. Verdicts, citations, the route and
timings travel in an extra `guardrag` field, which the official `openai` client keeps (as
`model_extra`). Under load the API answers 200, 429 (this key's rate limit) or 503 (saturated,
or a model down), never 500. With keys configured, the key is checked before anything else:
a stranger gets 401 before the body is read, and learns nothing from /healthz but that the
server lives.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from limits import parse as parse_rate
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rag.generator import PromptTooLong
from rag.multi import ChainStep, MergeStrategy
from rag.pipeline import MAX_CHAIN_STEPS, AskOptions, Conversation, Pipeline, QuestionError
from rag.schema import Answer, ChatMessage, Final, Retraction, StreamEvent, TextDelta
from rag.settings import Settings
from rag.telemetry import PrometheusTelemetry

log = logging.getLogger(__name__)

# The model id that lets the router choose; a name from generation.models fixes the model.
AUTO_MODEL = "guardrag"

# What one request may hold. The body as a whole is bounded by api.max_body_bytes; these
# bound each list and string in it, so that no stage loops over a caller's list for long.
# Messages: OpenAI clients resend the whole conversation, of which the question and the two
# turns before it are read; 256 is 128 exchanges.
MAX_MESSAGES = 256
# Content parts of one message: text parts are joined, others (images) ignored.
MAX_CONTENT_PARTS = 64
# The text of one message: 8x the 4,000 characters a question or an earlier turn may have
# (their own limits, with messages that say so), for the system prompts and older turns
# clients send and the API does not read.
MAX_MESSAGE_CHARS = 32_000
# Task hints are words that name a task or match its keywords (seven tasks, about eight
# keywords each); routing compares every hint with every keyword, and 200,000 hints took
# 10.6 s. Sixteen words of 64 characters are more than any task needs.
MAX_TASK_HINTS = 16
MAX_HINT_CHARS = 64
# Model names are keys of generation.models or hub ids (at most 96 characters on the Hub).
MAX_NAME_CHARS = 128
# A fan-out is one generation per model, each named once: more than any profile configures.
MAX_FAN_OUT = 8
# A content part's type: `text`, `image_url` and the like.
MAX_PART_TYPE_CHARS = 64
# Earlier turns and chain instructions go into the prompt and are pseudonymised on every
# request: bounded like the question, so one caller cannot occupy Presidio (and a core).
MAX_TURN_CHARS = 4000

_ModelName = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(max_length=MAX_PART_TYPE_CHARS)
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None

    @property
    def text(self) -> str:
        return _text_of(self.content)

    @field_validator("content")
    @classmethod
    def _within_limits(cls, content: str | list[_Part] | None) -> str | list[_Part] | None:
        if isinstance(content, list) and len(content) > MAX_CONTENT_PARTS:
            raise ValueError(f"a message has at most {MAX_CONTENT_PARTS} content parts")
        if len(_text_of(content)) > MAX_MESSAGE_CHARS:
            raise ValueError(f"a message has at most {MAX_MESSAGE_CHARS} characters of text")
        return content


def _text_of(content: str | list[_Part] | None) -> str:
    if isinstance(content, list):
        return "".join(p.text or "" for p in content if p.type == "text")
    return content or ""


class _ChainStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: _ModelName
    instruction: str = Field(max_length=MAX_TURN_CHARS)


class _GuardragOptions(BaseModel):
    """guardrag's own request options, in an extra `guardrag` object (`extra_body`)."""

    model_config = ConfigDict(extra="forbid")
    task_hints: list[Annotated[str, Field(max_length=MAX_HINT_CHARS)]] = Field(
        default_factory=list, max_length=MAX_TASK_HINTS
    )
    top_k: int | None = None
    fan_out: list[_ModelName] = Field(default_factory=list, max_length=MAX_FAN_OUT)
    merge: MergeStrategy = MergeStrategy.CONSENSUS
    chain: list[_ChainStep] = Field(default_factory=list, max_length=MAX_CHAIN_STEPS)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The OpenAI request fields guardrag uses; sampling fields are accepted and ignored
    (the profile decides them, so every answer passes the same checks)."""

    model_config = ConfigDict(extra="allow")
    model: _ModelName = AUTO_MODEL
    messages: list[_Message] = Field(max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    guardrag: _GuardragOptions = Field(default_factory=_GuardragOptions)


def _error(
    status: int,
    message: str,
    kind: str,
    headers: dict[str, str] | None = None,
    code: str | int | None = None,
    param: str | None = None,
) -> Response:
    error: dict[str, Any] = {
        "message": message,
        "type": kind,
        "code": status if code is None else code,
    }
    if param is not None:
        error["param"] = param
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to be over `limit` bytes: from its
    Content-Length, else while it arrives (a chunked body declares no length). The rest of
    a refused body is never kept (uvicorn discards what follows a response)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    received = bytearray()
    async for piece in request.stream():
        received += piece
        if len(received) > limit:
            return None
    return bytes(received)


def _parse_request(raw: bytes) -> ChatCompletionRequest | Response:
    """The request, or a 400 naming each wrong field and what is wrong with it. Pydantic's
    `input` (the value sent) is left out, and so is a field name the caller made up."""
    try:
        return ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
    problems = []
    for error in errors:
        loc = error["loc"][:-1] if error["type"] == "extra_forbidden" else error["loc"]
        problems.append((".".join(str(part) for part in loc), error["msg"]))
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return _error(
        400,
        "; ".join(f"{field or 'body'}: {msg}" for field, msg in problems[:3]) + more,
        "invalid_request_error",
        param=problems[0][0] or None,
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


# An absolute path of two or more parts that no URL or word runs into: /root/.cache/x/y, not
# http://host:8000/v1 or and/or.
_SERVER_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.@+-]+){2,}/?")


def without_server_paths(text: str) -> str:
    """`text` with each file-system path cut to its last part. Reasons we write name models
    as configured (rag/compose.py); this is for error texts from below (vLLM that cannot
    start a model from a folder, a store), which callers see in verdicts and stage notes."""
    return _SERVER_PATH.sub(lambda path: path.group().rstrip("/").rsplit("/", 1)[-1], text)


def _unavailable(answer: Answer) -> Response:
    """A failed or busy answer as a 503; its text can hold an error from below."""
    return _error(503, without_server_paths(answer.text), "model_unavailable", {"Retry-After": "2"})


def answer_extra(answer: Answer) -> dict[str, Any]:
    """What the API tells a caller beyond the text: never the prompt or pseudonymised text,
    nor this server's file paths."""
    return {
        "request_id": answer.request_id,
        "status": answer.status,
        "route": None if answer.route is None else asdict(answer.route),
        "verdicts": [
            {
                **{k: v for k, v in asdict(verdict).items() if k != "sanitized_text"},
                "reason": without_server_paths(verdict.reason),
            }
            for verdict in answer.verdicts
        ],
        "citations": [asdict(c) for c in answer.citations],
        "stages": [{**asdict(s), "detail": without_server_paths(s.detail)} for s in answer.stages],
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
        # "api:" as the chat's owners carry "chat:": no chat user's name can be a key's id
        # (cached answers and retrieval scope are keyed by it).
        return "api:" + hashlib.sha256(f"guardrag-api-user:{matched}".encode()).hexdigest()[:12]

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
    # FastAPI's own docs routes would answer anyone: _add_operator_routes serves them.
    app = FastAPI(
        title="guardrag", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None
    )
    admission = Admission(settings)
    pii = pipeline.stages.pii

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # A fault below us (store, model server) must not become a 500 for the caller;
        # the log holds the traceback under this id.
        error_id = uuid.uuid4().hex[:12]
        log.exception("request failed (error id %s)", error_id)
        return _error(503, f"the request could not be served (error id {error_id})", "unavailable")

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

    _add_operator_routes(app, pipeline, settings, metrics, admission, refuse)

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

    # The body is read here, after the key check, not by FastAPI before it: the schema for
    # the docs is given by hand.
    @app.post("/v1/chat/completions", openapi_extra=_REQUEST_BODY_DOC)
    async def chat_completions(request: Request) -> Response:
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
        # From here the request holds a slot, so bodies are read and parsed at most
        # max_concurrent at a time.
        admission.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.in_flight -= 1

        try:
            limit = settings.api.max_body_bytes
            raw = await _read_body(request, limit)
            if raw is None:
                release()
                return _error(
                    413,
                    f"the request body is over {limit} bytes (api.max_body_bytes)",
                    "invalid_request_error",
                )
            # Parsing a body of up to a megabyte is CPU work: off the event loop.
            body = await asyncio.to_thread(_parse_request, raw)
            if isinstance(body, Response):
                release()
                return body
            questions = [m for m in body.messages if m.role == "user"]
            if not questions:
                release()
                return _error(400, "messages hold no user message", "invalid_request_error")
            conversation = Conversation(user=user)
            refusal = await _unchecked_text_refusal(body, pipeline)
            if refusal is not None:
                release()
                return _error(400, refusal, "invalid_request_error")
            conversation.turns, chain = await asyncio.to_thread(
                _pseudonymised_context, body, conversation, pii
            )
            extra = body.guardrag
            options = AskOptions(
                task_hints=tuple(extra.task_hints),
                model=None if body.model in (AUTO_MODEL, "auto") else body.model,
                top_k=extra.top_k,
                fan_out=tuple(extra.fan_out),
                merge=extra.merge,
                chain=chain,
                priority=settings.api.priority,
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
            return _unavailable(final.answer)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        model_name = body.model
        if not body.stream:
            try:
                answer = final.answer if final else await _final_answer(events)
            finally:
                release()
            if answer.status in ("failed", "busy"):
                return _unavailable(answer)
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
                        extra={"retracted": True, "reason": without_server_paths(event.reason)},
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


def _add_operator_routes(
    app: FastAPI,
    pipeline: Pipeline,
    settings: Settings,
    metrics: PrometheusTelemetry,
    admission: Admission,
    refuse: Callable[[Request], Response],
) -> None:
    """Health, readiness, metrics and the docs. With keys configured, a stranger learns from
    /healthz that the server lives and nothing more; the rest ask for a key, except docs and
    metrics where api.public_docs / api.public_metrics open them."""

    def admitted(request: Request, public: bool = False) -> bool:
        return public or admission.user_for(request) is not None

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        # Liveness: this process serves. Probes (deploy/k8s) hold no key and need only the
        # status code; the replicas' state (their URLs, load) is for key holders.
        if not admitted(request):
            return {"status": "ok"}
        return {"status": "ok", "models": pipeline.stages.pool.status()}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        # Behind the key: each call probes every model server and names them. No probe of
        # ours uses it (deploy/k8s probes /healthz).
        if not admitted(request):
            return refuse(request)
        await pipeline.stages.pool.refresh()
        status = pipeline.stages.pool.status()
        ready = all(any(r["healthy"] for r in replicas) for replicas in status.values())
        return JSONResponse({"ready": ready, "models": status}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if not admitted(request, settings.api.public_metrics):
            return refuse(request)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        if not admitted(request, settings.api.public_docs):
            return refuse(request)
        return JSONResponse(_openapi_document(app))

    # The pages load /openapi.json from the browser, which sends no bearer key: with keys
    # and without api.public_docs, read /openapi.json with a key instead.
    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> Response:
        if not admitted(request, settings.api.public_docs):
            return refuse(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="guardrag API")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        if not admitted(request, settings.api.public_docs):
            return refuse(request)
        return get_redoc_html(openapi_url="/openapi.json", title="guardrag API")


_REQUEST_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
        },
    }
}


def _openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document (built once), with the chat request's schema added."""
    document = app.openapi()
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if "ChatCompletionRequest" not in schemas:
        request = ChatCompletionRequest.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas.update(request.pop("$defs", {}))
        schemas["ChatCompletionRequest"] = request
    return document


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


def _pseudonymised_context(
    body: ChatCompletionRequest, conversation: Conversation, pii: Any
) -> tuple[list[ChatMessage], tuple[ChainStep, ...]]:
    """The exchange before the question and the chain's instructions, pseudonymised with this
    request's vault so names in them get the same placeholders as in the question (Presidio:
    CPU work, run in a thread). Callers' system messages are not used: the profile's system
    prompt is part of the guarded path."""
    turns = [m for m in body.messages[:-1] if m.role in ("user", "assistant")][-2:]
    earlier = [
        ChatMessage(m.role, pii.pseudonymise(m.text, conversation.vault)[0])  # type: ignore[arg-type]
        for m in turns
    ]
    chain = tuple(
        ChainStep(step.model, pii.pseudonymise(step.instruction, conversation.vault)[0])
        for step in body.guardrag.chain
    )
    return earlier, chain


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
