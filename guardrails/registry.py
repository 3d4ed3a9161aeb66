"""Guards as lists: what a registered guard is, the PII adapter, and running a list of guards
on one text with each guard's policy, redacting guards in order and the others beside them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from guardrails.policy import Policy, apply_policy
from guardrails.verdict import CheckedAs, Guard, GuardContext, Verdict, is_available

if TYPE_CHECKING:
    from guardrails.pii import PresidioPII

S = TypeVar("S")


@dataclass(frozen=True)
class GuardEntry(Generic[S]):
    """A guard as the composition root registers it: how to build it from settings, which
    texts it checks, and its policy when the profile names none."""

    build: Callable[[S], Guard]
    checks: tuple[CheckedAs, ...]
    default_policy: Policy | None = None


class PresidioGuard:
    """The PII guard with the common signature: the conversation's vault comes from the
    context (PresidioPII takes it as an argument)."""

    name = "pii"

    def __init__(self, presidio: PresidioPII) -> None:
        self.presidio = presidio

    @property
    def available(self) -> bool:
        return self.presidio.available

    async def check(self, text: str, context: GuardContext) -> Verdict:
        return await self.presidio.check(text, context, context.vault)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PolicedGuard:
    """A guard and the policy that turns its verdicts into actions."""

    guard: Guard
    policy: Policy

    @property
    def name(self) -> str:
        return self.guard.name

    @property
    def available(self) -> bool:
        return is_available(self.guard)

    @property
    def redacts(self) -> bool:
        return self.policy.on_flag == "redact"

    async def check(self, text: str, context: GuardContext) -> Verdict:
        return apply_policy(await self.guard.check(text, context), self.policy)


@dataclass(frozen=True)
class Screening:
    """Every guard's verdict on one text (policy applied, in list order) and the text as the
    redacting guards left it."""

    verdicts: tuple[Verdict, ...]
    text: str

    @property
    def blocking(self) -> Verdict | None:
        return next((v for v in self.verdicts if v.blocks), None)


def find_guard(guards: Sequence[PolicedGuard], name: str) -> PolicedGuard | None:
    return next((g for g in guards if g.name == name), None)


async def screen(guards: Sequence[PolicedGuard], text: str, context: GuardContext) -> Screening:
    """Guards whose policy redacts run in list order, each on the text the one before left
    (a secret becomes `[AWS_ACCESS_KEY]` before the PII guard could make the URL around it a
    placeholder the answer restores); the others check the original text meanwhile."""
    screening = [g for g in guards if not g.redacts]
    checks = [asyncio.create_task(g.check(text, context)) for g in screening]
    redacted: dict[str, Verdict] = {}
    current = text
    try:
        for guard in (g for g in guards if g.redacts):
            verdict = await guard.check(current, context)
            if verdict.action == "redact" and verdict.sanitized_text is not None:
                current = verdict.sanitized_text
            redacted[guard.name] = verdict
        results = await asyncio.gather(*checks)
        screened = dict(zip((g.name for g in screening), results, strict=True))
    except BaseException:
        for check in checks:
            check.cancel()
        raise
    verdicts = tuple(redacted.get(g.name) or screened[g.name] for g in guards)
    return Screening(verdicts, current)
