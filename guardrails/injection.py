"""Prompt-injection and jailbreak detection for questions and for document chunks.

Layer 1 normalises the text (NFKC, homoglyphs, invisible characters, encoded spans) so that
obfuscation does not hide an attack; layer 2 matches rules written for attack *intent*
(override, role hijack, prompt extraction, delimiter injection) in several languages.
Further layers (exemplar similarity, a classifier model) plug in beside these rules.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import re
import time
import unicodedata
from dataclasses import dataclass

from guardrails.verdict import GuardContext, Verdict, clean, flagged

# Characters that render as nothing or reorder text: used to split keywords invisibly.
_INVISIBLE = re.compile(
    r"[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u206f\u3164\ufeff\uffa0\U000e0000-\U000e007f]"
)
# Cyrillic and Greek letters that look like Latin ones; NFKC leaves them alone.
_HOMOGLYPHS = str.maketrans(
    "аеорсухіјѕԁԛԝАВЕКМНОРСТХІЈЅαβεικνορτυχΑΒΕΗΙΚΜΝΟΡΤΥΧ",
    "aeopcyxijsdqwABEKMHOPCTXIJSabeiknoptuxABEHIKMNOPTYX",
)
_BASE64_SPAN = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX_SPAN = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){12,}\b")
_SPACED_LETTERS = re.compile(r"\b(?:[A-Za-z][\s.\-_*]){4,}[A-Za-z]\b")


def normalise(text: str) -> str:
    """The text as a reader would see it: compatibility forms folded, look-alike letters
    mapped to Latin, invisible characters removed, letter-by-letter spacing joined."""
    folded = unicodedata.normalize("NFKC", text)
    folded = _INVISIBLE.sub("", folded).translate(_HOMOGLYPHS)
    folded = _SPACED_LETTERS.sub(lambda m: re.sub(r"[\s.\-_*]", "", m.group(0)), folded)
    return re.sub(r"\s+", " ", folded)


def decoded_spans(text: str) -> list[str]:
    """Printable text hidden in base64, hex or rot13, decoded so the rules can read it."""
    found: list[str] = []
    for match in _BASE64_SPAN.finditer(text):
        span = match.group(0)
        try:
            raw = base64.b64decode(span + "=" * (-len(span) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        decoded = raw.decode("utf-8", errors="ignore")
        if len(decoded) >= 8 and sum(c.isprintable() for c in decoded) / len(decoded) > 0.9:
            found.append(decoded)
    for match in _HEX_SPAN.finditer(text):
        try:
            decoded = bytes.fromhex(re.sub(r"[\s:]", "", match.group(0))).decode("utf-8")
        except ValueError:
            continue
        if decoded.isprintable():
            found.append(decoded)
    if re.search(r"\brot-?13\b", text, re.IGNORECASE):
        found.append(codecs.decode(text, "rot13"))
    return found


@dataclass(frozen=True)
class Rule:
    category: str
    weight: float
    pattern: re.Pattern[str]


def _rule(category: str, weight: float, pattern: str) -> Rule:
    return Rule(category, weight, re.compile(pattern, re.IGNORECASE | re.DOTALL))


_PRIOR = (
    r"(?:all\s+|any\s+|the\s+|your\s+|my\s+|these\s+|those\s+|of\s+)*(?:previous|prior|above|"
    r"preceding|earlier|former|original|initial|system|existing|old|foregoing)"
)
_DIRECTIVES = r"(?:instructions?|prompts?|rules|directives|guidelines|commands?|context|orders)"

RULES: tuple[Rule, ...] = (
    # Instruction override, in English and a few other languages.
    _rule(
        "instruction_override",
        0.95,
        rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|discard|neglect)\b"
        rf"[^.\n]{{0,40}}?\b{_PRIOR}\b[^.\n]{{0,20}}?\b{_DIRECTIVES}\b",
    ),
    _rule(
        "instruction_override",
        0.9,
        rf"\b(?:ignore|disregard|forget)\s+(?:all|everything|anything)\b[^.\n]{{0,30}}"
        rf"(?:\b{_DIRECTIVES}\b|\bsaid\b|\btold\b|\babove\b|\bbefore\b)",
    ),
    _rule(
        "instruction_override",
        0.85,
        r"\b(?:new|updated|revised|real|actual)\s+(?:instructions?|rules|system\s+prompt)\s*[:\-]",
    ),
    _rule(
        "instruction_override",
        0.9,
        r"\b(?:ignora|ignorar|olvida|olvidar)\b.{0,40}\b(?:instrucciones|anteriores|reglas)\b"
        r"|\b(?:ignore[zr]?|oublie[zr]?)\b.{0,40}\b(?:instructions|précédentes|consignes)\b"
        r"|\b(?:ignorier\w*|vergiss\w*)\b.{0,40}\b(?:anweisungen|vorherigen|regeln)\b"
        r"|\b(?:ignora|dimentica)\b.{0,40}\b(?:istruzioni|precedenti)\b"
        r"|\b(?:ignore|esqueça|esqueca)\b.{0,40}\b(?:instruções|instrucoes|anteriores)\b",
    ),
    # Role hijack and jailbreak personas.
    _rule(
        "role_hijack",
        0.8,
        r"\b(?:you\s+are\s+now|from\s+now\s+on,?\s+you\s+(?:are|will|must)|act\s+as\s+(?:an?\s+)?"
        r"(?:unrestricted|unfiltered|uncensored|evil|jailbroken))\b",
    ),
    _rule(
        "jailbreak",
        0.9,
        r"\b(?:developer\s+mode|DAN\s+mode|jailbr(?:eak|oken)|do\s+anything\s+now|"
        r"without\s+(?:any\s+)?(?:restrictions|filters|censorship|limitations)|"
        r"no\s+(?:ethical|moral)\s+(?:guidelines|restrictions|limits))\b",
    ),
    _rule(
        "jailbreak",
        0.75,
        r"\bpretend\s+(?:that\s+)?you\s+(?:are|have)\s+(?:no|not|an?\s+(?:ai|model)\s+without)\b",
    ),
    # Extracting the system prompt or hidden configuration.
    _rule(
        "system_prompt_extraction",
        0.95,
        r"\b(?:reveal|print|show|display|output|repeat|tell\s+me|give\s+me|share|leak|dump|"
        r"write\s+out|spell\s+out|what\s+(?:is|are|were))\b[^.\n]{0,40}\b(?:your|the)\s+"
        r"(?:system\s+prompt|initial\s+(?:prompt|instructions)|hidden\s+(?:prompt|instructions)|"
        r"original\s+(?:prompt|instructions)|instructions\s+above|pre-?prompt|secret\s+"
        r"(?:key|password|instructions))\b",
    ),
    _rule(
        "system_prompt_extraction",
        0.85,
        r"\brepeat\b[^.\n]{0,30}\b(?:words|text|everything)\s+above\b",
    ),
    # Delimiter and template injection: faking the chat format or a new system turn.
    _rule(
        "delimiter_injection",
        0.9,
        r"<\|(?:im_start|im_end|system|endoftext|eot_id|start_header_id)\|>|\[/?INST\]|"
        r"<<SYS>>|^\s*#{2,}\s*(?:system|instruction)s?\b|\bEND\s+OF\s+(?:USER\s+)?INPUT\b",
    ),
    _rule(
        "delimiter_injection",
        0.7,
        r"(?:^|\n)\s*(?:system|assistant)\s*:\s*(?:you|ignore|new)\b",
    ),
    # Text aimed at an assistant that reads the document (indirect injection).
    _rule(
        "indirect_injection",
        0.85,
        r"\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:ai|assistant|llm|"
        r"language\s+model|chatbot|model)\b",
    ),
    _rule(
        "indirect_injection",
        0.8,
        r"\b(?:if\s+you\s+are\s+an?\s+(?:ai|assistant|language\s+model|llm)|"
        r"(?:ai|assistant)s?\s+reading\s+this)\b",
    ),
    # Sending data somewhere: markdown images or links that carry data in the URL.
    _rule(
        "data_exfiltration",
        0.85,
        r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?&][^)\s]*=|\b(?:send|post|forward|exfiltrate|upload)\b"
        r"[^.\n]{0,40}\b(?:conversation|chat\s+history|password|credentials|api\s+keys?)\b"
        r"[^.\n]{0,30}\b(?:to|at)\b\s+\S+",
    ),
)


class InjectionRules:
    """The injection guard: normalisation, decoding and intent rules, scored 0..1."""

    name = "injection"

    def __init__(self, threshold: float = 0.5, rules: tuple[Rule, ...] = RULES) -> None:
        self.threshold = threshold
        self.rules = rules

    def score(self, text: str) -> tuple[float, tuple[str, ...]]:
        views = [normalise(text)]
        views += [normalise(decoded) for decoded in decoded_spans(views[0])]
        hits: dict[str, float] = {}
        for view in views:
            for rule in self.rules:
                if rule.pattern.search(view):
                    hits[rule.category] = max(hits.get(rule.category, 0.0), rule.weight)
        if not hits:
            return 0.0, ()
        # Independent pieces of evidence raise the score: 1 - Π(1 - w).
        remaining = 1.0
        for weight in hits.values():
            remaining *= 1.0 - weight
        return round(1.0 - remaining, 4), tuple(sorted(hits))

    def check_sync(self, text: str) -> Verdict:
        started = time.perf_counter()
        score, categories = self.score(text)
        ms = (time.perf_counter() - started) * 1000
        if score >= self.threshold:
            return flagged(
                self.name, score, categories, f"matched rules: {', '.join(categories)}"
            ).timed(ms)
        return clean(self.name, score=score).timed(ms)

    async def check(self, text: str, context: GuardContext) -> Verdict:
        return await asyncio.to_thread(self.check_sync, text)
