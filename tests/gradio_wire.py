"""Gradio's queue protocol spoken by hand, as an attacker would: log in, join the queue for a
page event with any JSON inputs (forged file parts included), read the SSE stream.

`gradio_client` is no use for attacks: it uploads every file its inputs name from the client's
disk, so a forged path would become an honest upload.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from gradio_client.utils import apply_diff


@dataclass(frozen=True)
class EventResult:
    """What the queue said about one event: its final outputs (diffs applied) or its error."""

    success: bool
    outputs: list[Any]
    error: str | None
    messages: list[dict[str, Any]]


@dataclass
class GradioWire:
    base: str  # the app's root, e.g. "http://127.0.0.1:7860" or ".../chat"
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=120))
    session_hash: str = field(default_factory=lambda: uuid.uuid4().hex[:11])
    _config: dict[str, Any] | None = None

    def login(self, user: str, password: str) -> None:
        response = self.http.post(
            f"{self.base}/login", data={"username": user, "password": password}
        )
        response.raise_for_status()

    def config(self) -> dict[str, Any]:
        if self._config is None:
            response = self.http.get(f"{self.base}/config")
            response.raise_for_status()
            self._config = response.json()
        return self._config

    def fn_index(self, api_name: str) -> int:
        for index, dependency in enumerate(self.config()["dependencies"]):
            if dependency.get("api_name") == api_name:
                return int(dependency.get("id", index))
        raise KeyError(f"no event with api_name {api_name!r}")

    def call(
        self, api_name: str, data: list[Any], event_data: Any = None, timeout: float = 240
    ) -> EventResult:
        """Join the queue for one event and read its stream to the end."""
        joined = self.http.post(
            f"{self.base}/gradio_api/queue/join",
            json={
                "data": data,
                "event_data": event_data,
                "fn_index": self.fn_index(api_name),
                "trigger_id": None,
                "session_hash": self.session_hash,
            },
        )
        if joined.status_code != 200:
            return EventResult(False, [], f"join refused: {joined.status_code} {joined.text}", [])
        event_id = joined.json()["event_id"]
        messages: list[dict[str, Any]] = []
        outputs: list[Any] | None = None
        with self.http.stream(
            "GET",
            f"{self.base}/gradio_api/queue/data",
            params={"session_hash": self.session_hash},
            timeout=timeout,
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") not in (None, event_id):
                    continue
                messages.append(message)
                data_out = (message.get("output") or {}).get("data")
                if message.get("msg") == "process_generating" and data_out is not None:
                    outputs = (
                        list(data_out)
                        if outputs is None
                        else [
                            apply_diff(old, diff)
                            for old, diff in zip(outputs, data_out, strict=True)
                        ]
                    )
                if message.get("msg") == "process_completed":
                    success = bool(message.get("success"))
                    output = message.get("output") or {}
                    if success and output.get("data") is not None and outputs is None:
                        outputs = list(output["data"])
                    error = None if success else str(output.get("error") or output)
                    return EventResult(success, outputs or [], error, messages)
        return EventResult(False, outputs or [], "the stream ended without completing", messages)

    def file_urls(self, value: Any) -> list[str]:
        """Every file URL anywhere in an output value."""
        found: list[str] = []
        if isinstance(value, dict):
            url = value.get("url")
            if isinstance(url, str) and "file=" in url:
                found.append(url)
            for item in value.values():
                found += self.file_urls(item)
        elif isinstance(value, list):
            for item in value:
                found += self.file_urls(item)
        return found
