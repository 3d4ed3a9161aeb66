"""The output guard: Llama Guard 3 classifies each answer against categories S1–S14.

The guard builds Llama Guard's own prompt and parses its reply; serving the model (vLLM
in-process or a vLLM server) is handed in as a completion function by the composition root.
Anything but a well-formed `safe` / `unsafe` reply is `unavailable`, never `allow`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable

from guardrails.verdict import GuardContext, Verdict, clean, flagged, unavailable

# Llama Guard 3's hazard taxonomy (MLCommons), as its model card lists it.
CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

Complete = Callable[[str], Awaitable[str]]

_VERDICT_LINE = re.compile(r"^\s*(safe|unsafe)\s*$", re.IGNORECASE)
_CATEGORY_CODE = re.compile(r"^S(\d{1,2})$")


def build_prompt(answer: str, question: str, excluded: Iterable[str] = ()) -> str:
    """Llama Guard 3's prompt for judging the last Agent turn (its chat template, verbatim
    in structure, so the model sees what it was trained on)."""
    skip = set(excluded)
    categories = "\n".join(
        f"{code}: {name}." for code, name in CATEGORIES.items() if code not in skip
    )
    conversation = f"User: {question}\n\nAgent: {answer}" if question else f"Agent: {answer}"
    return (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Task: Check if there is unsafe content in 'Agent' messages in conversations according "
        "our safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST Agent message in the above "
        "conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second "
        "line must include a comma-separated list of violated categories."
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def parse_reply(reply: str) -> tuple[str, tuple[str, ...]] | None:
    """(`safe` | `unsafe`, categories) from Llama Guard's reply, or None when it is not one."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        return None
    head = _VERDICT_LINE.match(lines[0])
    if head is None:
        return None
    label = head.group(1).lower()
    if label == "safe":
        return ("safe", ()) if len(lines) == 1 else None
    if len(lines) != 2:
        return None
    codes = tuple(code.strip().upper() for code in lines[1].split(",") if code.strip())
    if not codes or not all(_CATEGORY_CODE.match(c) and c in CATEGORIES for c in codes):
        return None
    return "unsafe", codes


class LlamaGuard:
    name = "llama_guard"

    def __init__(
        self,
        model: str,
        complete: Complete | None,
        missing_reason: str = "",
        excluded_categories: Iterable[str] = (),
    ) -> None:
        self.model = model
        self._complete = complete
        self._missing_reason = missing_reason or f"output guard model {model} is not loaded"
        self.excluded = tuple(excluded_categories)

    @property
    def available(self) -> bool:
        return self._complete is not None

    async def check(self, text: str, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        if self._complete is None:
            return unavailable(self.name, self._missing_reason)
        try:
            reply = await self._complete(build_prompt(text, context.question, self.excluded))
        except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
            return unavailable(self.name, f"{self.model} failed: {exc}")
        ms = (time.perf_counter() - started) * 1000
        parsed = parse_reply(reply)
        if parsed is None:
            return unavailable(self.name, f"{self.model} replied in an unknown format").timed(ms)
        label, codes = parsed
        codes = tuple(c for c in codes if c not in self.excluded)
        if label == "safe" or not codes:
            return clean(self.name).timed(ms)
        names = ", ".join(f"{c} {CATEGORIES[c]}" for c in codes)
        return flagged(self.name, 1.0, codes, f"unsafe: {names}").timed(ms)
