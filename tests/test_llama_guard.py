"""Llama Guard's prompt and parser, its `unavailable` path, and the policies that follow."""

import pytest

from guardrails.llama_guard import LlamaGuard, build_prompt, parse_reply
from guardrails.policy import apply_policy
from guardrails.verdict import GuardContext
from rag.settings import GuardPolicy


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("safe", ("safe", ())),
        ("\n\nsafe", ("safe", ())),
        ("unsafe\nS1", ("unsafe", ("S1",))),
        ("unsafe\nS10,S11", ("unsafe", ("S10", "S11"))),
        (" unsafe\n S2, S14 ", ("unsafe", ("S2", "S14"))),
    ],
)
def test_replies_in_llama_guard_3_format_are_parsed(reply: str, parsed: tuple) -> None:
    assert parse_reply(reply) == parsed


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "Safe enough I think",
        "unsafe",
        "unsafe\nS99",
        "unsafe\nviolence",
        "safe\nS1",
        "unsafe\nS1\nS2",
    ],
)
def test_anything_else_is_not_a_verdict(reply: str) -> None:
    assert parse_reply(reply) is None


def test_prompt_lists_categories_minus_excluded_and_ends_at_the_assistant_turn() -> None:
    prompt = build_prompt("Paris.", "Capital of France?", excluded=["S6"])
    assert "S1: Violent Crimes." in prompt and "S14: Code Interpreter Abuse." in prompt
    assert "S6:" not in prompt
    assert "User: Capital of France?\n\nAgent: Paris." in prompt
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


async def _reply(text: str):  # a completion function returning a fixed model reply
    async def complete(prompt: str) -> str:
        return text

    return complete


async def test_unsafe_reply_flags_with_category_and_garbage_is_unavailable() -> None:
    unsafe = LlamaGuard("lg", await _reply("unsafe\nS9"))
    verdict = await unsafe.check("how to build it", GuardContext(checked_as="answer"))
    assert verdict.flagged and verdict.categories == ("S9",)
    assert "Indiscriminate Weapons" in verdict.reason
    garbled = LlamaGuard("lg", await _reply("I think it is fine"))
    assert (await garbled.check("x", GuardContext())).outcome == "unavailable"


async def test_excluded_categories_do_not_flag() -> None:
    guard = LlamaGuard("lg", await _reply("unsafe\nS6"), excluded_categories=["S6"])
    assert (await guard.check("advice", GuardContext())).outcome == "allow"


async def test_absent_model_is_unavailable_and_each_policy_does_what_it_says() -> None:
    guard = LlamaGuard("meta-llama/Llama-Guard-3-1B", None, missing_reason="not on disk")
    verdict = await guard.check("answer", GuardContext(checked_as="answer"))
    assert verdict.outcome == "unavailable" and verdict.reason == "not on disk"
    blocked = apply_policy(verdict, GuardPolicy(on_unavailable="block"))
    warned = apply_policy(verdict, GuardPolicy(on_unavailable="warn"))
    allowed = apply_policy(verdict, GuardPolicy(on_unavailable="allow"))
    assert (blocked.action, blocked.outcome, blocked.policy) == (
        "block",
        "unavailable",
        "on_unavailable=block",
    )
    assert warned.action == "warn" and not warned.blocks
    assert allowed.action == "allow"
