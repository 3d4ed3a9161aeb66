"""One RE2 pass over a text that says which injection rules could match it.

Python's `re` has no multi-pattern search: forty-odd rules meant forty-odd scans of every chunk
(1.6 ms a 1,000-character chunk, a fifth of ingest's time once the embedder ran in bfloat16).
RE2 matches a whole set of patterns in one linear pass. Each rule is translated into a looser
RE2 pattern that matches wherever the rule can: word boundaries and lookarounds are dropped (an
assertion removed only admits more), character classes are widened to Python's Unicode meaning
of ``\\w``, ``\\s`` and ``\\d``, and the pattern stops at its first gap (``.{0,80}``), since a
text that holds the whole match holds its beginning. The screen therefore never misses a rule
that matches; the rules themselves still decide, on the few that pass (1.9 a chunk, 4 a prompt
on the development sets): 0.3 ms a new chunk in all.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Any

import re2  # type: ignore[import-untyped]

# Python's own regex parser gives each rule's syntax tree, so no pattern is re-parsed by hand.
# Its modules are private (re._parser, re._constants since 3.11): a construct the translation
# does not know makes that rule "unscreened", always run (slower, never wrong).
sre_parse: Any = importlib.import_module("re._parser")
sre: Any = importlib.import_module("re._constants")

_EXACT_REPEAT_UP_TO = 4
# RE2 builds the set's DFA states as texts need them, within this budget; 16 MB holds them for
# the shipped rules, at 8 MB it starts discarding them (0.13 ms a seen chunk instead of 0.005).
_SET_MAX_MEM = 32 << 20


class _Unsupported(ValueError):
    pass


def _char(code: int) -> str:
    return chr(code) if chr(code).isascii() and chr(code).isalnum() else f"\\x{{{code:x}}}"


# Python's classes read Unicode; RE2's \w, \s and \d are ASCII. These cover at least Python's.
_CATEGORY = {
    sre.CATEGORY_DIGIT: r"\p{Nd}",
    sre.CATEGORY_NOT_DIGIT: r"\x{0}-\x{10ffff}",
    sre.CATEGORY_WORD: r"\p{L}\p{N}_",
    # Not a letter covers "neither letter, digit nor underscore".
    # Everything but "_": RE2's letters (a newer Unicode than Python's, and case-closed under
    # (?i)) are not all letters to Python.
    sre.CATEGORY_NOT_WORD: r"\x{0}-\x{5e}\x{60}-\x{10ffff}",
    sre.CATEGORY_SPACE: r"\s\x{b}\p{Z}\x{85}\x{1c}-\x{1f}",
    # RE2's \S (not ASCII space) holds everything Python's \S (not Unicode space) holds.
    sre.CATEGORY_NOT_SPACE: r"\S",
}


# Python's IGNORECASE equates i and I with dotless ı and dotted İ (re._casefix and İ's simple
# lowercase); RE2's case folding does not.
_TURKISH_I = {ord("i"), ord("I"), 0x130, 0x131}
_TURKISH_I_CLASS = r"iI\x{130}\x{131}"


def _class(items: list[tuple[Any, Any]], flags: int = 0) -> str:
    negated = bool(items) and items[0][0] is sre.NEGATE
    if negated:
        items = items[1:]
    parts = []
    for op, av in items:
        if op is sre.LITERAL:
            parts.append(_char(av))
        elif op is sre.RANGE:
            low, high = av
            parts.append(f"{_char(low)}-{_char(high)}")
        elif op is sre.CATEGORY and av in _CATEGORY:
            if negated:
                # Widening inside a negated class would narrow the class: match anything.
                return r"(?s:.)"
            parts.append(_CATEGORY[av])
        else:
            raise _Unsupported(f"class item {op}")
    if (
        flags & re.IGNORECASE
        and not negated
        and any(
            (op is sre.LITERAL and av in _TURKISH_I)
            or (op is sre.RANGE and any(av[0] <= c <= av[1] for c in _TURKISH_I))
            for op, av in items
        )
    ):
        parts.append(_TURKISH_I_CLASS)
    return f"[{'^' if negated else ''}{''.join(parts)}]"


def _repeat(low: int, high: int) -> str:
    if high <= _EXACT_REPEAT_UP_TO:
        return f"{{{low},{high}}}"
    return "*" if low == 0 else "+"


def _spans_words(piece: str) -> bool:
    """Whether a repeated piece can take in letters and spaces alike: a gap between the
    rule's words (.{0,80}, [^.!?]{0,25}), not the run of one word or of the spaces between."""
    return bool(re2.fullmatch(f"(?s:{piece})", "a")) and bool(re2.fullmatch(f"(?s:{piece})", " "))


def _translate(items: Any, flags: int) -> tuple[str, bool]:
    """The RE2 text for `items`, and whether it was cut short at a gap."""
    out = []
    for op, av in items:
        cut = False
        if op is sre.LITERAL:
            turkish = flags & re.IGNORECASE and av in _TURKISH_I
            out.append(f"[{_TURKISH_I_CLASS}]" if turkish else _char(av))
        elif op is sre.NOT_LITERAL:
            out.append(f"[^{_char(av)}]")
        elif op is sre.ANY:
            out.append(r"(?s:.)" if flags & re.DOTALL else r"[^\n]")
        elif op is sre.IN:
            out.append(_class(av, flags))
        elif op is sre.BRANCH:
            branches = [_translate(b, flags) for b in av[1]]
            out.append("(?:" + "|".join(text for text, _ in branches) + ")")
            cut = any(was_cut for _, was_cut in branches)
        elif op is sre.SUBPATTERN:
            _group, add_flags, del_flags, inner = av
            if (add_flags | del_flags) & ~(re.IGNORECASE | re.DOTALL):
                raise _Unsupported("inline flags other than i and s")
            inner_flags = (flags | add_flags) & ~del_flags
            case = ""
            if add_flags & re.IGNORECASE:
                case = "i"
            elif del_flags & re.IGNORECASE:
                case = "-i"
            text, cut = _translate(inner, inner_flags)
            out.append(f"{f'(?{case}:' if case else '(?:'}{text})")
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            low, high, inner = av
            text, cut = _translate(inner, flags)
            if cut or (high > _EXACT_REPEAT_UP_TO and _spans_words(text)):
                # The screen stops before a gap: the words before it must appear, and the
                # rule itself checks the rest. Gaps held open across 43 rules made RE2 build
                # new automaton states for every new text (0.6-1 ms a chunk).
                if low:
                    out.append(f"(?:{text})")
                return "".join(out), True
            out.append(f"(?:{text}){_repeat(low, high)}")
        elif op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue  # dropping an assertion only lets the screen match more
        else:
            raise _Unsupported(str(op))
        if cut:
            return "".join(out), True
    return "".join(out), False


def loosened(pattern: re.Pattern[str]) -> str:
    """An RE2 pattern that matches every text `pattern` finds a match in (and maybe more)."""
    body, _ = _translate(sre_parse.parse(pattern.pattern, pattern.flags), pattern.flags)
    if not body:
        raise _Unsupported("the pattern opens with a gap: nothing to screen on")
    return ("(?i)" if pattern.flags & re.IGNORECASE else "") + body


class RuleScreen:
    """Which of `patterns` could match a text, from one pass over it."""

    def __init__(self, patterns: Sequence[re.Pattern[str]]) -> None:
        options = re2.Options()
        options.max_mem = _SET_MAX_MEM
        self._set = re2.Set.SearchSet(options)
        self._screened: list[int] = []
        self.unscreened: frozenset[int] = frozenset()
        unscreened = []
        for index, pattern in enumerate(patterns):
            try:
                self._set.Add(loosened(pattern))
            except (_Unsupported, re2.error, ValueError):
                unscreened.append(index)
                continue
            self._screened.append(index)
        self._set.Compile()
        self.unscreened = frozenset(unscreened)

    def candidates(self, text: str) -> frozenset[int]:
        try:
            hits = self._set.Match(text) or ()
        except UnicodeEncodeError:
            # A lone surrogate (JSON "\\ud800") is not UTF-8: RE2 cannot read it; every rule can.
            return frozenset(range(len(self._screened) + len(self.unscreened)))
        return self.unscreened.union(self._screened[i] for i in hits)
