"""Turning a guard's finding into an action, by the policy settings name for that guard."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Protocol

from guardrails.verdict import Verdict


class Policy(Protocol):
    @property
    def on_flag(self) -> Literal["block", "redact", "warn"]: ...
    @property
    def on_unavailable(self) -> Literal["block", "warn", "allow"]: ...


def apply_policy(verdict: Verdict, policy: Policy) -> Verdict:
    if verdict.outcome == "unavailable":
        return replace(
            verdict,
            action=policy.on_unavailable,
            policy=f"on_unavailable={policy.on_unavailable}",
        )
    if verdict.flagged:
        if policy.on_flag == "redact" and verdict.sanitized_text is None:
            # The guard found something it cannot cut out (an injection verdict scores the
            # whole text): passing the text on would be `warn` without the warning.
            return replace(
                verdict,
                outcome="block",
                action="block",
                policy="on_flag=redact (nothing this guard can redact: blocked)",
            )
        return replace(
            verdict,
            outcome=policy.on_flag,
            action=policy.on_flag,
            policy=f"on_flag={policy.on_flag}",
        )
    return replace(verdict, action="allow", policy="")
