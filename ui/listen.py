"""Where a guardrag server may listen and whom it believes about addresses: one check and one
way to run uvicorn for every entry point that binds a socket (`guardrag chat`, `guardrag
serve`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from rag.settings import Settings
from ui.auth import login_required


class UnsafeBinding(ValueError):
    """Listening beyond loopback without a login (or API keys) would open the documents to the
    network."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to anything: not loopback.
        return False


def check_binding(settings: Settings, host: str, *, serves_api: bool) -> None:
    """Refuse a non-loopback interface unless everything served there asks who is calling."""
    if is_loopback(host):
        return
    if serves_api and not settings.api.keys:
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


def run_server(app: Any, settings: Settings, host: str, port: int, *, serves_api: bool) -> None:
    import uvicorn

    check_binding(settings, host, serves_api=serves_api)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, so anything on the
        # machine (or a proxy that passes the header through) could pick the address the
        # refused-key limiter counts against. The peer address is the truth; a proxy in
        # front makes every client one address, which errs on the side of limiting.
        proxy_headers=False,
        # Gradio and FastAPI say which server answers; nobody needs to know.
        server_header=False,
    )
