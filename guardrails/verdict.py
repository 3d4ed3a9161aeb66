"""What a guard says about one text, and what the pipeline then did about it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

Outcome = Literal["allow", "redact", "block", "warn", "unavailable"]
Action = Literal["allow", "redact", "block", "warn"]
CheckedAs = Literal["question", "chunk", "answer"]


@dataclass(frozen=True)
class Verdict:
    guard: str
    outcome: Outcome
    score: float = 0.0
    categories: tuple[str, ...] = ()
    # Never the checked text itself: reasons reach the audit log.
    reason: str = ""
    ms: float = 0.0
    # Filled in by `apply_policy`: what happened to the text, and the rule that decided it.
    action: Action = "allow"
    policy: str = ""
    # The text with findings replaced (PII pseudonyms). Kept out of repr and of the audit log.
    sanitized_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def flagged(self) -> bool:
        return self.outcome in ("redact", "block", "warn")

    @property
    def blocks(self) -> bool:
        return self.action == "block"

    def timed(self, ms: float) -> Verdict:
        return replace(self, ms=ms)


def clean(guard: str, score: float = 0.0, reason: str = "") -> Verdict:
    return Verdict(guard=guard, outcome="allow", score=score, reason=reason)


def flagged(
    guard: str, score: float, categories: tuple[str, ...], reason: str, sanitized: str | None = None
) -> Verdict:
    # "block" is the guard's proposal; the policy turns it into block, redact or warn.
    return Verdict(
        guard=guard,
        outcome="block",
        score=score,
        categories=categories,
        reason=reason,
        sanitized_text=sanitized,
    )


def unavailable(guard: str, reason: str) -> Verdict:
    return Verdict(guard=guard, outcome="unavailable", reason=reason)


@dataclass(frozen=True)
class GuardContext:
    """What a guard may know about the text besides the text."""

    checked_as: CheckedAs = "question"
    # For the output guard: the (pseudonymised) question the answer replies to.
    question: str = ""


class Guard(Protocol):
    """A guard checks one text. It never decides policy and never raises for its own faults:
    a guard that cannot run returns an `unavailable` verdict."""

    name: str

    async def check(self, text: str, context: GuardContext) -> Verdict: ...
