"""What Gradio leaves open when an app is mounted rather than launched, closed on our side:
its own input-path check, the directories it must never serve, and client input in its logs.

Upstream (Gradio 6.31) should: run `_check_allowed` for mounted apps too (it returns at once
unless `Blocks.has_launched`, which only `launch()` sets); not allow the working directory and
the temp directory for files an event returns; and keep event inputs out of the tracebacks it
prints ("Received inputs: [...]", the value in a preprocessing error).
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import gradio as gr
from gradio import utils as gradio_utils

from rag.settings import PROFILES_DIR, Settings

CODE_DIR = Path(__file__).resolve().parent.parent


def upload_folder() -> Path:
    """Where Gradio keeps files it received (GRADIO_TEMP_DIR, else <temp>/gradio)."""
    return Path(gradio_utils.get_upload_folder()).resolve()


def uploaded_path(path: str) -> Path | None:
    """A path an upload event names, believed only when it is a regular file Gradio received:
    inside its upload folder once every link is resolved, and not itself a link."""
    candidate = Path(path)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if candidate.is_symlink() or not resolved.is_file():
        return None
    folder = upload_folder()
    if resolved == folder or not resolved.is_relative_to(folder):
        return None
    return resolved


def discard_upload(path: Path) -> None:
    """Remove Gradio's copy of an uploaded file (and its folder once empty): the ingested copy
    is the one kept, and Gradio would otherwise serve this one by URL for as long as it lives."""
    folder = upload_folder()
    if not path.is_relative_to(folder) or path == folder:
        return
    path.unlink(missing_ok=True)
    parent = path.parent
    if parent != folder and parent.is_relative_to(folder) and not any(parent.iterdir()):
        parent.rmdir()


def blocked_paths(settings: Settings) -> list[str]:
    """What the chat never serves or accepts as a file, even when Gradio's defaults would
    (they allow the working directory and the temp directory): our data (history, uploads,
    the store, the audit log), models, profiles (password hashes, API keys), our code and the
    system's secrets. A directory holding Gradio's own upload folder is left out, or nothing
    could be uploaded."""
    candidates = [
        settings.data_dir,
        settings.models_dir,
        PROFILES_DIR,
        CODE_DIR,
        Path.home(),
        Path("/etc"),
        Path("/proc"),
        Path("/sys"),
        Path("/dev"),
    ]
    uploads = upload_folder()
    blocked = []
    for candidate in candidates:
        resolved = candidate.expanduser().resolve()
        if uploads.is_relative_to(resolved) or resolved == Path(tempfile.gettempdir()).resolve():
            continue
        blocked.append(str(resolved))
    return blocked


def enforce_path_checks(blocks: gr.Blocks) -> None:
    """Make Gradio check file paths in event inputs and outputs for a mounted app, as it does
    for a launched one: input files only from its upload folder, nothing from blocked paths."""
    # `_check_allowed` skips every check unless `has_launched`; `launch()` is the only thing
    # that sets it, and it is read nowhere else that a mounted app uses.
    blocks.has_launched = True


class _TracebackWithoutMessages(ModuleType):
    """The `traceback` module as Gradio's modules see it: the same, except that `print_exc`
    prints the stack and the exception types, never their messages, where Gradio puts the
    event's inputs (a question, a name: PII in the app log)."""

    def __init__(self) -> None:
        super().__init__("traceback")

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)

    @staticmethod
    def print_exc(
        limit: int | None = None, file: IO[str] | None = None, chain: bool = True
    ) -> None:
        exc = sys.exception()
        if exc is None:
            return
        out = file if file is not None else sys.stderr
        lines = ["Traceback (most recent call last):\n"]
        lines += traceback.format_tb(exc.__traceback__, limit)
        kinds = [type(exc).__qualname__]
        cause = exc.__cause__ or exc.__context__ if chain else None
        while cause is not None and len(kinds) < 8:
            kinds.append(type(cause).__qualname__)
            cause = cause.__cause__ or cause.__context__
        lines.append(f"{' <- '.join(kinds)}: message withheld (it may hold an event's inputs)\n")
        out.write("".join(lines))


_WITHHELD = _TracebackWithoutMessages()


def withhold_event_inputs_from_logs() -> None:
    """Gradio prints a traceback for a failed event with `traceback.print_exc()` in these
    modules; the exception's message quotes the inputs the client sent."""
    from gradio import queueing, route_utils, routes

    for module in (queueing, routes, route_utils, gradio_utils):
        if getattr(module, "traceback", None) is traceback:
            module.traceback = _WITHHELD  # type: ignore[attr-defined]
