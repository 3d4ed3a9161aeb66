"""Semantic injection layer: how close a text sits to attack exemplars versus benign ones.

The banks (guardrails/exemplars/*.jsonl) are written by the project per attack *family*, and
embedded once with the embedder retrieval already loaded; a paraphrase of a known family lands
near its exemplars even when no rule's wording matches. Long texts are scored window by window,
so an instruction planted at the end of an ordinary e-mail is not averaged away.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXEMPLARS_DIR = Path(__file__).resolve().parent / "exemplars"
Embed = Callable[[Sequence[str]], np.ndarray]

_SENTENCE = re.compile(r"(?<=[.!?:;])\s+|\n+")
# Neighbours averaged per bank: one near-duplicate exemplar should not decide alone.
TOP_K = 3


@dataclass(frozen=True)
class Exemplar:
    text: str
    family: str


def load_bank(name: str, folder: Path = EXEMPLARS_DIR) -> list[Exemplar]:
    path = folder / f"{name}.jsonl"
    with path.open(encoding="utf-8") as rows:
        return [Exemplar(**json.loads(line)) for line in rows if line.strip()]


def windows(text: str, max_words: int = 24) -> list[str]:
    """The whole text when short; else sentence groups of up to `max_words` words, each
    overlapping the previous by one sentence, and every sentence on its own."""
    words = text.split()
    if len(words) <= max_words:
        return [text]
    sentences = [s for s in _SENTENCE.split(text) if s.strip()]
    groups: list[str] = []
    current: list[str] = []
    for sentence in sentences:
        if current and len(" ".join([*current, sentence]).split()) > max_words:
            groups.append(" ".join(current))
            current = current[-1:]
        current.append(sentence)
    if current:
        groups.append(" ".join(current))
    # Each sentence alone too: a planted instruction is usually one sentence, and beside
    # ordinary sentences in a group its signal is diluted. A sentence longer than the window
    # is cut on words so nothing escapes scoring.
    groups += [s.strip() for s in sentences if len(sentences) > 1]
    out: list[str] = []
    for group in dict.fromkeys(groups):
        group_words = group.split()
        out += [
            " ".join(group_words[i : i + max_words]) for i in range(0, len(group_words), max_words)
        ]
    return out


class ExemplarSimilarity:
    """Scores 0..1: 0.5 where a text is as close to attacks as to benign text, rising with
    the margin by which attacks are closer."""

    name = "semantic"

    def __init__(
        self,
        embed: Embed,
        attacks: Sequence[Exemplar],
        benign: Sequence[Exemplar],
        cache_dir: Path | None = None,
        embedder_name: str = "",
        margin_scale: float = 4.0,
    ) -> None:
        self._embed = embed
        self.attacks = list(attacks)
        self.benign = list(benign)
        self.margin_scale = margin_scale
        self._attack_vectors = self._bank_vectors(self.attacks, cache_dir, embedder_name, "attacks")
        self._benign_vectors = self._bank_vectors(self.benign, cache_dir, embedder_name, "benign")

    def _bank_vectors(
        self, bank: Sequence[Exemplar], cache_dir: Path | None, embedder_name: str, label: str
    ) -> np.ndarray:
        texts = [e.text for e in bank]
        digest = hashlib.sha256(("\x00".join([embedder_name, *texts])).encode()).hexdigest()[:16]
        cached = cache_dir / f"exemplars-{label}-{digest}.npy" if cache_dir else None
        if cached is not None and cached.exists():
            return np.load(cached)
        vectors = np.asarray(self._embed(texts), dtype=np.float32)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, vectors)
        return vectors

    def score(self, texts: Sequence[str]) -> tuple[float, str]:
        """The highest score over the windows of every view of a text, and the family of the
        attack exemplar nearest to that window."""
        pieces = [w for text in texts for w in windows(text)]
        vectors = np.asarray(self._embed(pieces), dtype=np.float32)
        attack_sims = vectors @ self._attack_vectors.T
        benign_sims = vectors @ self._benign_vectors.T
        top_attack = np.sort(attack_sims, axis=1)[:, -TOP_K:].mean(axis=1)
        top_benign = np.sort(benign_sims, axis=1)[:, -TOP_K:].mean(axis=1)
        margins = top_attack - top_benign
        worst = int(np.argmax(margins))
        score = float(np.clip(0.5 + self.margin_scale * margins[worst], 0.0, 1.0))
        family = self.attacks[int(np.argmax(attack_sims[worst]))].family
        return round(score, 4), family
