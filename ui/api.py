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
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from limits import parse as parse_rate
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rag.generator import PromptTooLong
from rag.multi import ChainStep
from rag.pipeline import AskOptions, Conversation, Pipeline, QuestionError
from rag.schema import Answer, Final, StreamEvent, TextDelta
from rag.settings import Settings
from rag.shared_state import rate_limit_storage
from rag.telemetry import PrometheusTelemetry
from ui.openai_format import (
    AUTO_MODEL,
    ChatCompletionRequest,
    answer_extra,
    completion,
    earlier_turns,
    error_response,
    parse_request,
    stream_chunks,
    stream_error,
    without_server_paths,
)

# answer_extra is part of this module's surface (the sources view's tests read it here).
__all__ = ["Admission", "answer_extra", "build_api", "prompt_too_long_message"]

log = logging.getLogger(__name__)


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


def _unavailable(answer: Answer) -> Response:
    """A failed or busy answer as a 503; its text can hold an error from below."""
    return error_response(
        503, without_server_paths(answer.text), "model_unavailable", {"Retry-After": "2"}
    )


class Admission:
    """Who is asking (from the bearer key), at what rate, and whether there is room."""

    def __init__(self, settings: Settings, metrics: PrometheusTelemetry) -> None:
        self.keys = settings.api.keys
        self.metrics = metrics
        self.rate = parse_rate(settings.api.rate_limit)
        # memory:// by default; redis:// makes a key's rate one across every pod.
        self.limiter = MovingWindowRateLimiter(rate_limit_storage(settings))
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
    admission = Admission(settings, metrics)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # A fault below us (store, model server) must not become a 500 for the caller;
        # the log holds the traceback under this id.
        error_id = uuid.uuid4().hex[:12]
        log.exception("request failed (error id %s)", error_id)
        return error_response(
            503, f"the request could not be served (error id {error_id})", "unavailable"
        )

    def refuse(request: Request) -> Response:
        metrics.api_refused.labels("invalid_key").inc()
        if admission.refused_too_often(request):
            return error_response(
                429, "too many refused keys from this address", "rate_limit_exceeded"
            )
        return error_response(401, "a valid bearer key is required", "invalid_api_key")

    def throttled(user: str) -> Response:
        metrics.api_refused.labels("rate_limited").inc()
        return error_response(
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
        # No await from here to the slot being taken, so no other request can take the
        # room in between.
        refused = _refused_for_load(admission, user, throttled)
        if refused is not None:
            return refused
        rate_headers = admission.rate_headers(user)
        # From here the request holds a slot, so bodies are read and parsed at most
        # max_concurrent at a time.
        slot = _Slot(admission)
        try:
            return await _answer(request, pipeline, settings, user, slot, rate_headers)
        except BaseException:
            slot.release()
            raise

    return app


def _refused_for_load(
    admission: Admission, user: str, throttled: Callable[[str], Response]
) -> Response | None:
    """Room is checked before the key's allowance is spent: a request refused because the
    server is full costs the caller nothing."""
    if not admission.has_room():
        if not admission.rate_left(user):
            return throttled(user)
        admission.metrics.api_refused.labels("overloaded").inc()
        return error_response(
            503,
            f"{admission.in_flight} requests in progress (limit {admission.max_concurrent})",
            "overloaded",
            {"Retry-After": "1"},
        )
    if not admission.within_rate(user):
        return throttled(user)
    return None


class _Slot:
    """One of the api.max_concurrent places a request holds until its last byte is sent."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.released = False
        admission.in_flight += 1
        admission.metrics.api_in_progress.inc()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.in_flight -= 1
            self.admission.metrics.api_in_progress.dec()


@dataclass(frozen=True)
class _Started:
    """A request whose answer has begun: read up to its first text (or its end)."""

    body: ChatCompletionRequest
    first: list[StreamEvent]
    events: AsyncIterator[StreamEvent]


async def _answer(
    request: Request,
    pipeline: Pipeline,
    settings: Settings,
    user: str,
    slot: _Slot,
    rate_headers: dict[str, str],
) -> Response:
    try:
        started = await _start_answer(request, pipeline, settings, user)
    except Exception as exc:  # noqa: BLE001 - what the caller can fix is a 400; the rest re-raises
        slot.release()
        return _client_error(exc, settings)
    if isinstance(started, Response):
        slot.release()
        return started
    final = next((e for e in started.first if isinstance(e, Final)), None)
    if final is not None and final.answer.status in ("failed", "busy"):
        slot.release()
        return _unavailable(final.answer)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    body = started.body
    if not body.stream:
        try:
            answer = final.answer if final else await _final_answer(started.events)
        finally:
            slot.release()
        if answer.status in ("failed", "busy"):
            return _unavailable(answer)
        return JSONResponse(completion(completion_id, body.model, answer), headers=rate_headers)
    lines = _sse(started, completion_id, slot)
    return StreamingResponse(lines, media_type="text/event-stream", headers=rate_headers)


async def _start_answer(
    request: Request, pipeline: Pipeline, settings: Settings, user: str
) -> _Started | Response:
    """The request read, parsed and handed to the pipeline, or the response refusing it."""
    limit = settings.api.max_body_bytes
    raw = await _read_body(request, limit)
    if raw is None:
        return error_response(
            413,
            f"the request body is over {limit} bytes (api.max_body_bytes)",
            "invalid_request_error",
        )
    # Parsing a body of up to a megabyte is CPU work: off the event loop.
    body = await asyncio.to_thread(parse_request, raw)
    if isinstance(body, Response):
        return body
    questions = [m for m in body.messages if m.role == "user"]
    if not questions:
        return error_response(400, "messages hold no user message", "invalid_request_error")
    # Earlier turns and chain instructions are the caller's text: the pipeline screens them.
    events = pipeline.stream(
        questions[-1].text,
        Conversation(user=user),
        _ask_options(body, settings),
        earlier=earlier_turns(body),
    )
    # Read up to the first text (or the end) before answering, so a request that fails
    # early gets its real status instead of a 200 stream holding an error.
    first: list[StreamEvent] = []
    async for event in events:
        first.append(event)
        if isinstance(event, TextDelta | Final):
            break
    return _Started(body, first, events)


def _ask_options(body: ChatCompletionRequest, settings: Settings) -> AskOptions:
    extra = body.guardrag
    return AskOptions(
        task_hints=tuple(extra.task_hints),
        model=None if body.model in (AUTO_MODEL, "auto") else body.model,
        top_k=extra.top_k,
        fan_out=tuple(extra.fan_out),
        merge=extra.merge,
        chain=tuple(ChainStep(step.model, step.instruction) for step in extra.chain),
        priority=settings.api.priority,
    )


def _client_error(exc: Exception, settings: Settings) -> Response:
    """A 400 for what the caller can fix; anything else goes on to the 503 handler."""
    too_long = _prompt_too_long(exc)
    if too_long is not None:
        return error_response(
            400,
            prompt_too_long_message(too_long, settings),
            "invalid_request_error",
            code="context_length_exceeded",  # OpenAI's code for the same refusal
        )
    if isinstance(exc, QuestionError):
        return error_response(400, str(exc), "invalid_request_error")
    raise exc


async def _sse(started: _Started, completion_id: str, slot: _Slot) -> AsyncIterator[str]:
    body = started.body
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    events = _chain(started.first, started.events)
    try:
        async for line in stream_chunks(events, completion_id, body.model, include_usage):
            yield line
    except Exception:  # headers are sent: the error goes in the stream
        error_id = uuid.uuid4().hex[:12]
        log.exception("stream failed (error id %s)", error_id)
        yield stream_error(f"the answer could not be finished (error id {error_id})")
    finally:
        slot.release()
        # A caller that hangs up mid-answer stops the generation too.
        await started.events.aclose()  # type: ignore[attr-defined]


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
        # Ready when every model has a replica that answered this very probe: a refused
        # connection at start is not ready, even before a second probe marks it down.
        ready = all(
            any(r["healthy"] and r["answering"] for r in replicas) for replicas in status.values()
        )
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
