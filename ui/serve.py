"""`guardrag serve`: the OpenAI-compatible API and the chat on one port, one pipeline."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from rag.compose import build_pipeline, prometheus_metrics, start_engines
from rag.settings import Settings
from ui.api import build_api
from ui.auth import login_required
from ui.chat import mount_chat

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class UnsafeBinding(ValueError):
    """Listening beyond loopback with no API keys would open the documents to the network."""


def check_binding(settings: Settings, host: str) -> None:
    if host in LOOPBACK:
        return
    if not settings.api.keys:
        raise UnsafeBinding(
            f"refusing to serve on {host} without API keys: set api.keys in the profile "
            "(or GUARDRAG_API__KEYS='[\"…\"]'), or listen on 127.0.0.1"
        )
    if not login_required(settings.chat):
        # Without a login the chat is one admin user, "local": fine on a laptop's loopback,
        # never for a network.
        raise UnsafeBinding(
            f"refusing to serve the chat on {host} without a login: set chat.users (see "
            "guardrag hash-password) or chat.trusted_header, or listen on 127.0.0.1"
        )


def build_app(settings: Settings) -> FastAPI:
    pipeline = build_pipeline(settings)
    # Load the models before the port opens, so the first request does not wait for them.
    start_engines(pipeline)
    app = build_api(pipeline, settings, prometheus_metrics())

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/chat/")

    return mount_chat(app, pipeline, settings, path="/chat")


def serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    check_binding(settings, host)
    uvicorn.run(build_app(settings), host=host, port=port, log_level="warning")
