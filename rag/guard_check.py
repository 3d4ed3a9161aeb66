"""The guards run on a text by themselves (`guardrag guard check`), with the same builders,
policies and verdicts as a request, for evaluating and scripting them."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from guardrails.audit import verdict_record
from guardrails.injection import InjectionDetector
from guardrails.llama_guard import LlamaGuard
from guardrails.pii import PresidioPII
from guardrails.policy import apply_policy
from guardrails.verdict import CheckedAs, GuardContext, Verdict
from rag.settings import GuardPolicy, GuardsSettings


@dataclass(frozen=True)
class GuardChecker:
    pii: PresidioPII
    injection: InjectionDetector
    output_guard: LlamaGuard
    settings: GuardsSettings

    async def check(self, text: str, checked_as: CheckedAs) -> dict[str, Any]:
        context = GuardContext(checked_as=checked_as)
        # PII runs beside the other guards, as it does for a question in a request.
        pii_run = asyncio.create_task(asyncio.to_thread(self.pii.analyse, text))
        checks: list[Coroutine[Any, Any, Verdict]] = []
        policies: list[GuardPolicy] = []
        if checked_as in ("question", "chunk"):
            checks.append(self.injection.check(text, context))
            policies.append(self.settings.injection.policy)
        if checked_as == "answer":
            checks.append(self.output_guard.check(text, context))
            policies.append(self.settings.output.policy)
        raw: list[Verdict] = await asyncio.gather(*checks)
        pii_verdict, findings = await pii_run
        verdicts = [apply_policy(pii_verdict, self.settings.pii.policy)]
        verdicts += [apply_policy(v, p) for v, p in zip(raw, policies, strict=True)]
        spans = [
            {"type": f.entity_type, "start": f.start, "end": f.end, "score": round(f.score, 3)}
            for f in findings
        ]
        return {
            "as": checked_as,
            "blocked": any(v.blocks for v in verdicts),
            "verdicts": [verdict_record(v) for v in verdicts],
            "pii": spans,
        }
