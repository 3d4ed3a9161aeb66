"""Ending an answer where a small model starts to loop.

Greedy SmolLM2 often writes one right sentence and then writes it again until max_tokens runs
out. `RepeatedSentenceCut` watches the streamed text and ends the answer where a sentence
repeats one already written, without delaying the stream: text is held back only while the
sentence being written still reads like the start of an earlier one, and released the moment
it differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A sentence ends at . ! or ? followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_SPACES = re.compile(r"\s+")
# Shorter sentences ("Yes.", "1.", a list marker) repeat legitimately.
MIN_SENTENCE_CHARS = 12


def _normalised(sentence: str) -> str:
    return _SPACES.sub(" ", sentence).strip().lower()


@dataclass
class RepeatedSentenceCut:
    """Feed the answer's deltas in order; each call returns the text to show now and whether
    the answer should end here (the rest of the model's output is dropped)."""

    _written: set[str] = field(default_factory=set)
    _sentence: str = ""  # the sentence being written, shown or not
    _held: str = ""  # its end that is not shown yet (it may be the start of a repeat)

    def feed(self, delta: str) -> tuple[str, bool]:
        self._sentence += delta
        self._held += delta
        shown = ""
        while (end := _SENTENCE_END.search(self._sentence)) is not None:
            key = _normalised(self._sentence[: end.start()])
            if len(key) >= MIN_SENTENCE_CHARS:
                if key in self._written:
                    return shown.rstrip(), True
                self._written.add(key)
            # The finished sentence's held part is shown; what follows it starts the next.
            following = len(self._sentence) - end.end()
            shown += self._held[: len(self._held) - following]
            self._held = self._held[len(self._held) - following :]
            self._sentence = self._sentence[end.end() :]
        if not self._could_repeat(self._sentence):
            shown, self._held = shown + self._held, ""
        return shown, False

    def finish(self) -> str:
        """What is still held back when the model stops. Text is only ever held while its
        sentence reads as the start of one already written, so what is held when the model
        stops (at max_tokens or on its own) is a repeat cut short: it is dropped."""
        rest, self._held, self._sentence = self._held, "", ""
        return "" if rest.strip() else rest

    def _could_repeat(self, partial: str) -> bool:
        key = _normalised(partial)
        if not key:
            return True  # only whitespace so far: keep it with what follows
        return any(w.startswith(key) for w in self._written)


def without_repeated_sentences(text: str) -> str:
    """A whole answer cut where it first repeats a sentence (for non-streamed answers)."""
    cut = RepeatedSentenceCut()
    shown, stop = cut.feed(text)
    return shown if stop else shown + cut.finish()
