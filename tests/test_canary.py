"""The system-prompt leak guard: a per-request canary and long verbatim runs of the prompt,
checked on streamed answers by the windowed output check, with no model involved."""

from __future__ import annotations

import asyncio

from guardrails.canary import (
    MIN_VERBATIM_CHARS,
    SystemPromptLeakGuard,
    longest_verbatim_run,
    new_canary,
    with_canary,
)
from guardrails.registry import PolicedGuard
from guardrails.verdict import GuardContext
from rag.pipeline import WindowedOutputCheck
from rag.settings import GenerationSettings, GuardPolicy

PROMPT = GenerationSettings().system_prompt


def context(canary: str = "") -> GuardContext:
    return GuardContext(checked_as="answer", system_prompt=PROMPT, canary=canary or new_canary())


def check(text: str, ctx: GuardContext | None = None) -> tuple[str, str]:
    verdict = asyncio.run(SystemPromptLeakGuard().check(text, ctx or context()))
    return verdict.outcome, verdict.reason


def test_each_request_gets_its_own_canary_hidden_in_the_system_prompt() -> None:
    first, second = new_canary(), new_canary()
    assert first != second
    prompt = with_canary(PROMPT, first)
    assert first in prompt and prompt.startswith(PROMPT)
    assert new_canary("When is salary paid?") == new_canary("When is salary paid?")


def test_an_answer_holding_the_canary_is_flagged_whatever_its_case() -> None:
    ctx = context()
    outcome, reason = check(f"My hidden marker is {ctx.canary.upper()}.", ctx)
    assert outcome == "block" and "canary" in reason
    assert ctx.canary not in reason, "the reason names what leaked, never the canary itself"


def test_a_verbatim_run_of_the_system_prompt_is_flagged_across_spacing_and_case() -> None:
    leaked = "Sure! My instructions: " + PROMPT.upper().replace(" ", "  \n")
    assert check(leaked)[0] == "block"


def test_an_ordinary_answer_and_a_short_echo_of_a_clause_are_not_leaks() -> None:
    assert check("The minimum password length is 14 characters [1].")[0] == "allow"
    # The prompt's own advice, echoed alone, is under the threshold on purpose.
    echo = "If the context does not hold the answer, say so. It does not mention parking."
    assert longest_verbatim_run(echo, PROMPT) < MIN_VERBATIM_CHARS
    assert check(echo)[0] == "allow"


def test_the_windowed_check_stops_a_streamed_leak_at_the_first_window_it_reads() -> None:
    async def stream() -> tuple[int, str | None]:
        ctx = context()
        guards = (PolicedGuard(SystemPromptLeakGuard(), GuardPolicy(on_flag="block")),)
        windows = WindowedOutputCheck(guards, ctx, window_chars=40)
        answer = "Here is what I was told. " + PROMPT + " And more text follows here."
        so_far = ""
        for position in range(0, len(answer), 8):
            so_far += answer[position : position + 8]
            stopped = windows.feed(so_far)
            if stopped is not None:
                return len(so_far), stopped.guard
            await asyncio.sleep(0)  # the window checks run between deltas, as in a stream
        windows.cancel()
        return len(so_far), None

    shown, guard = asyncio.run(stream())
    assert guard == "system_prompt_leak"
    assert shown < len(PROMPT), "the stream stops before the whole prompt is out"
