"""What a guard says about one text, and what the pipeline then did about it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

Outcome = Literal["allow", "redact", "block", "warn", "unavailable"]
Action = Literal["allow", "redact", "block", "warn"]
# `turn`: an earlier turn of a conversation (or the conversation as a whole), which a guard
# may judge on its own thresholds; it runs the question's guards.
CheckedAs = Literal["question", "turn", "chunk", "answer"]


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

    def record(self) -> dict[str, Any]:
        """The verdict as the audit log, the API and the CLI show it. `sanitized_text` is
        left out on purpose: it is derived from the user's text."""
        return {
            "guard": self.guard,
            "outcome": self.outcome,
            "action": self.action,
            "policy": self.policy,
            "score": round(self.score, 4),
            "categories": list(self.categories),
            "reason": self.reason,
            "ms": round(self.ms, 2),
        }


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


class PlaceholderVault(Protocol):
    """One conversation's placeholders for the values a guard replaced (guardrails/pii.py)."""

    def placeholder_for(self, entity_type: str, value: str) -> str: ...


@dataclass(frozen=True)
class GuardContext:
    """What a guard may know about the text besides the text: everything per conversation or
    per request lives here, so every guard has the same `check(text, context)`."""

    checked_as: CheckedAs = "question"
    # For the output guards: the (pseudonymised) question the answer replies to.
    question: str = ""
    # The conversation's pseudonym vault: a redacting guard's placeholders are kept in it.
    vault: PlaceholderVault | None = field(default=None, compare=False, repr=False)
    # For the system-prompt leak guard: the prompt the model was given and this request's
    # canary in it (never shown, never logged).
    system_prompt: str = field(default="", repr=False)
    canary: str = field(default="", repr=False)


class Guard(Protocol):
    """A guard checks one text. It never decides policy and never raises for its own faults:
    a guard that cannot run returns an `unavailable` verdict. A guard whose model may be
    missing also says so in an `available` attribute (see `is_available`)."""

    @property
    def name(self) -> str: ...

    async def check(self, text: str, context: GuardContext) -> Verdict: ...


def is_available(guard: Guard) -> bool:
    """Whether the guard can run at all; guards without models always can."""
    return bool(getattr(guard, "available", True))
