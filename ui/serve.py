"""`guardrag serve`: the OpenAI-compatible API and the chat on one port, one pipeline."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from rag.compose import build_pipeline, prometheus_metrics, start_engines
from rag.settings import Settings
from ui.api import build_api
from ui.chat import mount_chat
from ui.listen import check_binding, run_server


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
    # Refused before any model loads: a wrong binding should fail in a second, not a minute.
    check_binding(settings, host, serves_api=True)
    run_server(build_app(settings), settings, host, port, serves_api=True)
