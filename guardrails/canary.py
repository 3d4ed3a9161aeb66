"""The system prompt never leaks: a per-request canary hidden in the system prompt, and a
check of each answer for the canary or a long verbatim run of the prompt. Needs no model,
so the local profile checks every answer for something real even without Llama Guard."""

from __future__ import annotations

import difflib
import hashlib
import re
import secrets
import time

from guardrails.verdict import CheckedAs, GuardContext, Verdict, clean, flagged

# A run of the system prompt this long (after folding case and spaces) is a quotation, not a
# coincidence: the default prompt's longest clause an answer might echo on its own ("If the
# context does not hold the answer, say so") is 48 characters.
MIN_VERBATIM_CHARS = 60
_SPACES = re.compile(r"\s+")


def new_canary(request: str = "") -> str:
    """A marker no answer contains by chance (64 bits). Given the request's text, the same
    request gets the same canary, so a greedy model still answers it the same way every time
    (the canary is part of its prompt); without, a random one."""
    if not request:
        return f"gr-{secrets.token_hex(8)}"
    return f"gr-{hashlib.sha256(request.encode()).hexdigest()[:16]}"


def with_canary(system_prompt: str, canary: str) -> str:
    # An HTML comment the model is not asked to do anything with, so an answer holds it only
    # when the model repeats its instructions. After the prompt, not before: placed first it
    # led SmolLM2 to recite the whole prompt in 2 of 8 example questions (0 of 8 placed last,
    # and 0 of 8 without a canary; 5 of 8 answers then began as without one).
    return f"{system_prompt}\n<!-- {canary} -->"


def _folded(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()


def longest_verbatim_run(answer: str, prompt: str) -> int:
    """Characters of the longest stretch of `prompt` that `answer` repeats word for word."""
    a, b = _folded(answer), _folded(prompt)
    if not a or not b:
        return 0
    match = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match()
    return match.size


class SystemPromptLeakGuard:
    """Flags an answer holding this request's canary or a long run of the system prompt."""

    name = "system_prompt_leak"
    checks: frozenset[CheckedAs] = frozenset({"answer"})
    available = True

    def __init__(self, min_verbatim_chars: int = MIN_VERBATIM_CHARS) -> None:
        self.min_verbatim_chars = min_verbatim_chars

    async def check(self, text: str, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        if context.canary and context.canary.casefold() in text.casefold():
            verdict = flagged(self.name, 1.0, ("canary",), "the answer holds the prompt's canary")
            return verdict.timed((time.perf_counter() - started) * 1000)
        run = longest_verbatim_run(text, context.system_prompt)
        # A prompt shorter than the threshold leaks when most of it is repeated.
        needed = min(self.min_verbatim_chars, max(20, len(_folded(context.system_prompt)) * 3 // 4))
        ms = (time.perf_counter() - started) * 1000
        if context.system_prompt and run >= needed:
            reason = f"the answer repeats {run} characters of the system prompt verbatim"
            return flagged(self.name, 1.0, ("verbatim",), reason).timed(ms)
        return clean(self.name, score=run / max(needed, 1)).timed(ms)
