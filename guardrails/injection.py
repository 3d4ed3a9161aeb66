"""Prompt-injection and jailbreak detection for questions and for document chunks.

Layer 1 normalises the text (NFKC, homoglyphs, invisible characters, encoded spans) so that
obfuscation does not hide an attack; then each layer scores the views: intent rules
(override, role hijack, prompt extraction, delimiter injection, in several languages),
a logistic regression trained on the project's own banks, similarity to attack exemplars, and a
classifier model when one is on disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from guardrails.injection_classifier import InjectionClassifier
from guardrails.injection_exemplars import ExemplarSimilarity
from guardrails.injection_learned import LearnedInjectionScorer
from guardrails.verdict import GuardContext, Verdict, clean, flagged, unavailable

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
    # A negation just before the match ("never reveal the system prompt", "do not add … to
    # your answer") turns it into a defensive statement, not an attack.
    negatable: bool = False

    def matches(self, text: str) -> bool:
        for match in self.pattern.finditer(text):
            window = (max(0, match.start() - 30), match.start() + 25)
            if not (self.negatable and _NEGATED.search(text, *window)):
                return True
        return False


_NEGATED = re.compile(
    r"\b(?:not|never|n't|refuse|refuses|decline|declines|cannot|forbidden|prohibit\w*|must\s+not)\b",
    re.IGNORECASE,
)


def _rule(category: str, weight: float, pattern: str, negatable: bool = False) -> Rule:
    return Rule(category, weight, re.compile(pattern, re.IGNORECASE | re.DOTALL), negatable)


_PRIOR = (
    r"(?:all\s+|any\s+|the\s+|your\s+|my\s+|these\s+|those\s+|of\s+)*(?:previous|prior|above|"
    r"preceding|earlier|former|original|initial|system|existing|old|foregoing)"
)
_DIRECTIVES = (
    r"(?:instructions?|prompts?|rules|directives|guidelines|commands?|context|orders|requests?|"
    r"messages?|tasks?|constraints|restrictions|programming)"
)

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
    _rule(
        "instruction_override",
        0.85,
        r"\b(?:ignore|disregard|forget|overlook|skip)\s+(?:all\s+|everything\s+|anything\s+)?"
        r"(?:that\s+|what\s+)?(?:the\s+)?(?:above|before|prior|previous(?:ly)?|earlier|you\s+(?:were|have\s+been)"
        r"\s+(?:told|instructed|given))\b",
    ),
    _rule(
        "instruction_override",
        0.75,
        # Claimed authority: "as your creator / developer / administrator, …".
        r"\bas\s+your\s+(?:creator|developer|programmer|administrator|admin|owner|maker|"
        r"operator|supervisor|trainer)\b",
    ),
    _rule(
        "jailbreak",
        0.8,
        # Switching the assistant into a made-up mode: "I'm entering knowledge verification
        # mode", "<GOD MODE>", "you are now in developer mode".
        r"<\s*[\w ]{0,20}mode\s*>"
        r"|\[\s*(?:dev(?:eloper)?|god|admin|sudo|system)\s*(?:prompt|mode)\s*\]"
        r"|\b(?:i\s*'?m|i\s+am|we\s+are|you\s+are|you're)\s+(?:now\s+)?(?:entering|in|switching\s+to|"
        r"activating)\s+(?:an?\s+|the\s+)?['\"]?[\w -]{0,30}\bmode\b"
        r"|\b(?:god|sudo|jailbreak|dan|unrestricted|unfiltered)\s+mode\b",
    ),
    _rule(
        "jailbreak",
        0.8,
        # Personas that replace the assistant.
        r"\byou\s+(?:will|shall|must|are\s+going\s+to)\s+(?:now\s+)?(?:act|talk|speak|respond|"
        r"behave|roleplay|role-play|pretend)\s+as\b|\bcontinue\s+as\s+[A-Z]|\bstay\s+in\s+"
        r"character\b|\byou\s+are\s+(?:no\s+longer|not)\s+(?:an?\s+)?(?:ai|assistant|chatgpt|"
        r"language\s+model|bound)\b|\b(?:ignores?|ignoring|bypass(?:es|ing)?|breaks?|free\s+from)"
        r"\s+(?:all\s+|any\s+)?(?:the\s+)?(?:rules|guidelines|policies|filters|restrictions|"
        r"content\s+policy|ethics)\b",
    ),
    _rule(
        "system_prompt_extraction",
        0.8,
        # Secrets the assistant holds: "what is your password", "share your API key".
        r"\b(?:tell|share|give|send|reveal|show|print|what\s+is|what's|disclose|provide)\b"
        r"[^.?!\n]{0,30}\byour\s+(?:password|passcode|pin|secret(?:\s+key)?|api\s+key|"
        r"credentials|private\s+key|access\s+token|hidden\s+(?:reasoning|rules|instructions|"
        r"prompt)|chain[- ]of[- ]thought|internal\s+(?:rules|reasoning|configuration))\b",
        negatable=True,
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
        # Naming a jailbreak is not one ("does an iPhone jailbreak void the warranty?"); asking
        # for a mode without limits is.
        r"\b(?:DAN\s+mode|do\s+anything\s+now|"
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
        negatable=True,
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
    # Steering the assistant's reply for a third party: an imperative about "your response"
    # (add, include, translate, format it…), as planted in pages and e-mails the model reads.
    _rule(
        "response_manipulation",
        0.8,
        # "Include a sentence … in your reply", "… emojis in your response?": text about how
        # the assistant's reply must look, which a document has no business saying.
        r"\b(?:in|into|to|within|throughout|at\s+the\s+(?:end|start|beginning|top|bottom)\s+of)"
        r"\s+(?:each\s+of\s+)?your\s+(?:(?:whole|entire|next|final)\s+)?(?:response|reply|answer|"
        r"output|responses|replies|answers|outputs)\b",
        negatable=True,
    ),
    _rule(
        "response_manipulation",
        0.8,
        # "Render your response in Portuguese", "Augment your reply with …".
        r"\b(?:render|format|write|provide|give|present|deliver|"
        r"translate|encode|reverse|misspell|anagram|rearrange|modify|alter|change|rewrite|augment|"
        r"enhance|enrich|end|begin|start|finish|conclude|display|output|express|structure|make)"
        r"\s+(?:\w+\s+){0,2}?your\s+(?:(?:whole|entire|next|final)\s+)?(?:response|reply|answer|"
        r"output|responses|replies|answers|outputs)\b",
        negatable=True,
    ),
    _rule(
        "response_manipulation",
        0.8,
        r"\b(?:respond|reply|answer|speak|talk|write)\b[^.!?\n]{0,40}\bfrom\s+now\s+on\b|"
        r"\bfrom\s+now\s+on\b[^.!?\n]{0,40}\b(?:respond|reply|answer|speak|talk|write|act)\b",
    ),
    # A fake system or tool turn inside content: "<system> Browsing interrupted…",
    # "NEW INSTRUCTION TO CHAT ASSISTANT", "you (the assistant) will…".
    _rule(
        "fake_system_message",
        0.85,
        r"<\s*/?\s*(?:system|sys|instructions?|admin)\s*>|\[\s*(?:system|admin)\s*(?:message|note)?\s*\]"
        r"|\b(?:browsing|conversation|session)\s+(?:interrupted|disrupted|paused)\b"
        r"|\binstructions?\s+(?:to|for)\s+(?:the\s+)?(?:chat\s+)?(?:assistant|ai|bot|model)\b"
        r"|\byou\s*\(\s*(?:the\s+)?(?:assistant|ai|chatbot|model|llm)\b",
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
    """The rule layer: intent patterns over the normalised and decoded views of a text."""

    name = "rules"

    def __init__(self, rules: tuple[Rule, ...] = RULES) -> None:
        self.rules = rules

    def score(self, views: Sequence[str]) -> tuple[float, tuple[str, ...]]:
        hits: dict[str, float] = {}
        for view in views:
            for rule in self.rules:
                if rule.matches(view):
                    hits[rule.category] = max(hits.get(rule.category, 0.0), rule.weight)
        if not hits:
            return 0.0, ()
        # Independent pieces of evidence raise the score: 1 - Π(1 - w).
        remaining = 1.0
        for weight in hits.values():
            remaining *= 1.0 - weight
        return round(1.0 - remaining, 4), tuple(sorted(hits))


def views_of(text: str) -> list[str]:
    """The text as a reader sees it, plus any encoded spans decoded."""
    seen = normalise(text)
    return [seen, *(normalise(decoded) for decoded in decoded_spans(seen))]


@dataclass(frozen=True)
class LayerThresholds:
    rules: float = 0.5
    learned: float = 0.85
    semantic: float = 0.75
    classifier: float = 0.8


class InjectionDetector:
    """The injection guard: rules, the learned layer, exemplar similarity and (when on disk) a
    classifier, each with its own threshold; any layer over its threshold flags the text."""

    name = "injection"

    def __init__(
        self,
        rules: InjectionRules,
        semantic: ExemplarSimilarity | None = None,
        classifier: InjectionClassifier | None = None,
        thresholds: LayerThresholds = LayerThresholds(),
        notes: str = "",
        learned: LearnedInjectionScorer | None = None,
    ) -> None:
        self.rules = rules
        self.learned = learned
        self.semantic = semantic
        self.classifier = classifier
        self.thresholds = thresholds
        # Layers that were asked for but could not load, said in every verdict's reason.
        self.notes = notes

    def layer_scores(self, text: str) -> dict[str, tuple[float, tuple[str, ...]]]:
        views = views_of(text)
        scores = {"rules": self.rules.score(views)}
        if self.learned is not None:
            scores["learned"] = (self.learned.score(views), ("learned",))
        if self.semantic is not None:
            value, family = self.semantic.score(views)
            scores["semantic"] = (value, (f"semantic:{family}",))
        if self.classifier is not None:
            scores["classifier"] = (self.classifier.score(views), ("classifier",))
        return scores

    def check_sync(self, text: str) -> Verdict:
        started = time.perf_counter()
        try:
            scores = self.layer_scores(text)
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            # A layer that breaks (a classifier out of memory, say) makes the verdict
            # unavailable; the policy then decides, never a silent allow.
            return unavailable(self.name, f"injection check failed: {type(exc).__name__}: {exc}")
        ms = (time.perf_counter() - started) * 1000
        over = {
            layer: value
            for layer, value in scores.items()
            if value[0] >= getattr(self.thresholds, layer)
        }
        summary = ", ".join(f"{layer} {value[0]:.2f}" for layer, value in scores.items())
        reason = summary + (f"; {self.notes}" if self.notes else "")
        top = max(value[0] for value in scores.values())
        if not over:
            return clean(self.name, score=top, reason=reason).timed(ms)
        categories = tuple(sorted({c for value in over.values() for c in value[1]}))
        return flagged(self.name, top, categories, reason).timed(ms)

    async def check(self, text: str, context: GuardContext) -> Verdict:
        return await asyncio.to_thread(self.check_sync, text)
