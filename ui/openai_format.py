"""The OpenAI chat-completions wire format: the request guardrag reads, and the completion,
stream chunks and errors it answers with. guardrag's own fields travel in `guardrag`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rag.multi import MergeStrategy
from rag.pipeline import MAX_CHAIN_STEPS, MAX_TURN_CHARS
from rag.schema import Answer, ChatMessage, Final, Retraction, StreamEvent, TextDelta

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


def error_response(
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


def parse_request(raw: bytes) -> ChatCompletionRequest | Response:
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
    return error_response(
        400,
        "; ".join(f"{field or 'body'}: {msg}" for field, msg in problems[:3]) + more,
        "invalid_request_error",
        param=problems[0][0] or None,
    )


# An absolute path of two or more parts that no URL or word runs into: /root/.cache/x/y, not
# http://host:8000/v1 or and/or.
_SERVER_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.@+-]+){2,}/?")


def without_server_paths(text: str) -> str:
    """`text` with each file-system path cut to its last part. Reasons we write name models
    as configured (rag/compose.py); this is for error texts from below (vLLM that cannot
    start a model from a folder, a store), which callers see in verdicts and stage notes."""
    return _SERVER_PATH.sub(lambda path: path.group().rstrip("/").rsplit("/", 1)[-1], text)


def answer_extra(answer: Answer) -> dict[str, Any]:
    """What the API tells a caller beyond the text: never the prompt or pseudonymised text,
    nor this server's file paths."""
    return {
        "request_id": answer.request_id,
        "status": answer.status,
        "route": None if answer.route is None else asdict(answer.route),
        "verdicts": [
            {**verdict.record(), "reason": without_server_paths(verdict.reason)}
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


def finish_reason(answer: Answer) -> str:
    # OpenAI's own name for text a content filter withheld.
    return "stop" if answer.status == "answered" else "content_filter"


def earlier_turns(body: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    """The user and assistant turns before the question, as the caller sent them: the
    pipeline screens them all (an assistant turn a client sends is its text too). Callers'
    system messages are not used: the profile's system prompt is part of the guarded path."""
    question = max(i for i, m in enumerate(body.messages) if m.role == "user")
    return tuple(
        ChatMessage(m.role, m.text)  # type: ignore[arg-type]
        for m in body.messages[:question]
        if m.role in ("user", "assistant")
    )


def completion(completion_id: str, model: str, answer: Answer) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": finish_reason(answer),
            }
        ],
        "usage": usage(answer),
        "guardrag": answer_extra(answer),
    }


def usage_chunk(completion_id: str, model: str, counts: dict[str, int] | None) -> str:
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


def stream_chunk(
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


async def stream_chunks(
    events: AsyncIterator[StreamEvent],
    completion_id: str,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events for a streamed answer: text deltas, a retraction marker, the refusal
    or the end with guardrag's fields, usage when asked for, then [DONE]."""
    yield stream_chunk(completion_id, model, {"role": "assistant", "content": ""})
    async for event in events:
        if isinstance(event, TextDelta):
            yield stream_chunk(completion_id, model, {"content": event.text})
        elif isinstance(event, Retraction):
            # Clients that read `guardrag` replace what they showed; the refusal follows as
            # content with finish_reason content_filter.
            yield stream_chunk(
                completion_id,
                model,
                {"content": ""},
                extra={"retracted": True, "reason": without_server_paths(event.reason)},
            )
        elif isinstance(event, Final):
            answer = event.answer
            if answer.status != "answered":
                yield stream_chunk(completion_id, model, {"content": answer.text})
            yield stream_chunk(
                completion_id,
                model,
                {},
                finish_reason=finish_reason(answer),
                extra=answer_extra(answer),
            )
            if include_usage:
                yield usage_chunk(completion_id, model, usage(answer))
    yield "data: [DONE]\n\n"


def stream_error(message: str) -> str:
    """An error once the stream's headers are sent: it goes in the stream, then [DONE]."""
    error = {"message": message, "type": "unavailable", "code": 503}
    return f"data: {json.dumps({'error': error})}\n\ndata: [DONE]\n\n"
