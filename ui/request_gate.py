"""What every HTTP request to the chat (and, under `guardrag serve`, the API) passes before a
route sees it: a body-size limit, Gradio routes we do not serve, and Gradio session hashes
bound to the caller who first used them.

One ASGI middleware, because Gradio's routes parse JSON bodies on the event loop, some before
any login check (`/cancel`, `/stream/…`): a red-team froze every route for 34 s with one 60 MB
body sent to `/gradio_api/cancel` without logging in.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Gradio routes no page of ours needs, each a way in: `deep_link` writes a session's whole state
# (the chat, personal data included) to a file any user can fetch by URL; `file=http…` makes the
# server fetch a URL for the client; `monitoring` shows every user's event counts.
_REFUSED_SUFFIXES = ("/gradio_api/deep_link",)
_REFUSED_PARTS = ("/gradio_api/file=http", "/monitoring")
# Where Gradio takes a session hash: a query parameter, a path segment, a JSON body field.
_HEARTBEAT = "/gradio_api/heartbeat/"
# Sessions remembered per process; a page load makes one. The oldest are forgotten first.
MAX_BOUND_SESSIONS = 100_000


@dataclass
class RequestGate:
    """An ASGI middleware. `caller_of` returns what identifies the caller's login (the trusted
    header's user, Gradio's session cookie), or None when nobody logs in."""

    app: ASGIApp
    max_body_bytes: int
    max_upload_bytes: int
    caller_of: Callable[[Scope], str | None]
    _owners: OrderedDict[str, str] = field(default_factory=OrderedDict)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.endswith(_REFUSED_SUFFIXES) or any(part in path for part in _REFUSED_PARTS):
            await _refuse(send, 404, "not found")
            return
        is_upload = path.endswith("/gradio_api/upload")
        limit = self.max_upload_bytes if is_upload else self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, f"the request body is over {limit} bytes")
            return
        body: bytes | None = None
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and not is_upload:
            # Read here (at most `limit` bytes, then refused) and replayed to the route: a
            # chunked body has no length to check first.
            body = await _read_body(receive, limit)
            if body is None:
                await _refuse(send, 413, f"the request body is over {limit} bytes")
                return
        elif declared is None and is_upload and scope["method"] == "POST":
            await _refuse(send, 411, "an upload must say its length")
            return
        if "/gradio_api/" in path and not self._session_is_callers(scope, body):
            await _refuse(send, 403, "this session belongs to another login")
            return
        await self.app(scope, receive if body is None else _replay(body, receive), send)

    def _session_is_callers(self, scope: Scope, body: bytes | None) -> bool:
        """Bind a session hash to the first login that uses it; refuse it to any other.
        Gradio keys session state and the event stream by this hash alone, which the client
        chooses: with another user's hash, their answers streamed to the wrong person."""
        session = _session_hash(scope, body)
        if session is None:
            return True
        caller = self.caller_of(scope)
        if caller is None:
            return True
        owner = self._owners.get(session)
        if owner is None:
            self._owners[session] = caller
            if len(self._owners) > MAX_BOUND_SESSIONS:
                self._owners.popitem(last=False)
            return True
        self._owners.move_to_end(session)
        return owner == caller


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(chunks)
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _session_hash(scope: Scope, body: bytes | None) -> str | None:
    path: str = scope["path"]
    if _HEARTBEAT in path:
        return path.split(_HEARTBEAT, 1)[1].split("/", 1)[0] or None
    query = scope.get("query_string", b"").decode("latin-1")
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "session_hash" and value:
            return value
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        if isinstance(parsed, dict) and isinstance(parsed.get("session_hash"), str):
            return str(parsed["session_hash"]) or None
    return None


async def _refuse(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload.encode()})
