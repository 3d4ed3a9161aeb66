"""The guards run on a text by themselves (`guardrag guard check`), with the same lists,
builders, policies and verdicts as a request, for evaluating and scripting them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guardrails.pii import PseudonymVault
from guardrails.registry import PolicedGuard, PresidioGuard, find_guard, screen
from guardrails.verdict import CheckedAs, GuardContext


@dataclass(frozen=True)
class GuardChecker:
    # The guards for each kind of text, as a request or an ingestion runs them.
    guards: Mapping[CheckedAs, tuple[PolicedGuard, ...]]
    system_prompt: str

    async def check(self, text: str, checked_as: CheckedAs) -> dict[str, Any]:
        guards = self.guards[checked_as]
        context = GuardContext(
            checked_as=checked_as, vault=PseudonymVault(), system_prompt=self.system_prompt
        )
        screening = await screen(guards, text, context)
        return {
            "as": checked_as,
            "blocked": screening.blocking is not None,
            "verdicts": [v.record() for v in screening.verdicts],
            "pii": await asyncio.to_thread(self._pii_spans, guards, text),
        }

    @staticmethod
    def _pii_spans(guards: tuple[PolicedGuard, ...], text: str) -> list[dict[str, Any]]:
        """Where the PII guard found what (offsets and types, never values)."""
        found = find_guard(guards, "pii")
        if found is None or not isinstance(found.guard, PresidioGuard) or not found.available:
            return []
        return [
            {"type": f.entity_type, "start": f.start, "end": f.end, "score": round(f.score, 3)}
            for f in found.guard.presidio.find(text)
        ]
