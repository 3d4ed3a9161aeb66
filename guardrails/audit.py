"""The audit log: one JSON line per request with verdicts, route, chunk ids and timings.

Never the question, the answer, or any PII: a record holds lengths, ids and decisions only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from guardrails.verdict import Verdict


def pseudonymous_user(user: str) -> str:
    return hashlib.sha256(f"guardrag-user:{user}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AuditRecord:
    request_id: str
    time: str
    profile: str
    user: str
    question_chars: int
    status: str
    verdicts: Sequence[Verdict]
    route: Mapping[str, Any] | None
    chunk_ids: Sequence[str]
    timings_ms: Mapping[str, float]

    def to_json(self) -> str:
        return json.dumps(
            {
                "request_id": self.request_id,
                "time": self.time,
                "profile": self.profile,
                "user": pseudonymous_user(self.user),
                "question_chars": self.question_chars,
                "status": self.status,
                "verdicts": [v.record() for v in self.verdicts],
                "route": dict(self.route) if self.route else None,
                "chunk_ids": list(self.chunk_ids),
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            },
            ensure_ascii=False,
        )


class AuditLog:
    def __init__(self, path: Path, echo_to: TextIO | None = None) -> None:
        self.path = path
        # Also each line to this stream (a pod's stdout), where a cluster's log pipeline
        # collects it; None (a laptop): the file only, so `ask --json` stays one document.
        self.echo_to = echo_to
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> None:
        line = record.to_json() + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
            if self.echo_to is not None:
                self.echo_to.write(line)
                self.echo_to.flush()
