"""Trains the learned injection layer on the project's own exemplar banks, never on evaluation
data: `python -m guardrails.train_injection` rewrites guardrails/exemplars/learned_injection.npz.

Every bank text goes to training or to a held-out split by a hash of its text; the threshold
is the one that keeps the held-out benign texts' false-positive rate at TARGET_FPR, and the
held-out figures are stored beside the weights.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from guardrails.injection import InjectionRules, views_of
from guardrails.injection.train_head import stored_threshold, threshold_at_fpr
from guardrails.injection_exemplars import Exemplar, load_bank
from guardrails.injection_learned import (
    WEIGHTS_PATH,
    Featurizer,
    LearnedInjectionScorer,
    LearnedWeights,
)

# One bank text in five is held out to choose the threshold and measure the layer.
HELD_OUT_EVERY = 5
# Far stricter than the product's 3 % budget: text the project did not write is harder than its
# own held-out texts (a threshold at 3 % here flagged 10.8 % of the benign development set), so
# the threshold sits just above every held-out benign score.
TARGET_FPR = 0.0
# Families whose texts are planted inside ordinary documents to make indirect attacks.
PLANTABLE = frozenset(
    {
        "response_manipulation",
        "indirect_note",
        "instruction_override",
        "data_exfiltration",
        "system_prompt_extraction",
        "multilingual",
    }
)
REGULARISATION_C = 4.0
SEED = 0


@dataclass(frozen=True)
class Example:
    text: str
    attack: bool
    family: str


def banks_digest(attacks: Sequence[Exemplar], benign: Sequence[Exemplar]) -> str:
    """Names the bank contents the weights were trained on, so stale weights are detectable."""
    joined = "\x00".join(f"{e.family}\x01{e.text}" for e in [*attacks, *benign])
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def held_out(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def plant(attack: str, document: str, rng: random.Random) -> str:
    """The attack inserted between two sentences of an ordinary document."""
    sentences = document.split(". ")
    at = rng.randint(0, len(sentences))
    return ". ".join([*sentences[:at], attack.rstrip("."), *sentences[at:]])


def examples(attacks: Sequence[Exemplar], benign: Sequence[Exemplar], seed: int) -> list[Example]:
    """The bank texts, plus attacks planted in documents and pairs of documents joined, so
    the model sees indirect attacks and long benign texts too."""
    rng = random.Random(seed)
    documents = [b.text for b in benign if b.family == "document"]
    plantable = [a.text for a in attacks if a.family in PLANTABLE]
    out = [Example(a.text, True, a.family) for a in attacks]
    out += [Example(b.text, False, b.family) for b in benign]
    out += [
        Example(plant(rng.choice(plantable), rng.choice(documents), rng), True, "planted")
        for _ in range(len(attacks) // 2)
    ]
    out += [
        Example(f"{rng.choice(documents)} {rng.choice(documents)}", False, "document_pair")
        for _ in range(len(documents) // 2)
    ]
    return out


def split_banks(
    attacks: Sequence[Exemplar], benign: Sequence[Exemplar]
) -> tuple[list[Example], list[Example]]:
    train = examples(
        [a for a in attacks if not held_out(a.text)],
        [b for b in benign if not held_out(b.text)],
        SEED,
    )
    test = examples(
        [a for a in attacks if held_out(a.text)], [b for b in benign if held_out(b.text)], SEED
    )
    return train, test


def fit(
    train: Sequence[Example], featurizer: Featurizer, rules: InjectionRules
) -> LogisticRegression:
    texts, evidence, labels = [], [], []
    for example in train:
        views = views_of(example.text)
        found = rules.score(views)
        # Every view the detector scores (normalised, decoded spans) is a training text.
        for view in views:
            texts.append(view)
            evidence.append(found)
            labels.append(int(example.attack))
    model = LogisticRegression(C=REGULARISATION_C, max_iter=5000, class_weight="balanced")
    model.fit(featurizer.transform(texts, evidence), labels)
    return model


def train(attacks: Sequence[Exemplar], benign: Sequence[Exemplar]) -> LearnedWeights:
    rules = InjectionRules()
    featurizer = Featurizer(tuple(sorted({rule.category for rule in rules.rules})))
    train_set, test_set = split_banks(attacks, benign)
    model = fit(train_set, featurizer, rules)
    coef = model.coef_.ravel().astype(np.float32)
    nonzero = np.flatnonzero(coef)
    weights = LearnedWeights(featurizer, nonzero, coef[nonzero], float(model.intercept_[0]), {})
    scorer = LearnedInjectionScorer(weights)
    held_out_views = [views_of(e.text) for e in test_set]
    scores = np.array([scorer.score(views, rules.score(views)) for views in held_out_views])
    is_attack = np.array([e.attack for e in test_set])
    threshold = stored_threshold(
        scores[~is_attack], threshold_at_fpr(scores[~is_attack], TARGET_FPR)
    )
    by_family: dict[str, list[bool]] = defaultdict(list)
    for example, value in zip(test_set, scores, strict=True):
        by_family[("attack:" if example.attack else "benign:") + example.family].append(
            bool(value >= threshold)
        )
    meta: dict[str, object] = {
        "banks_digest": banks_digest(attacks, benign),
        "train_texts": len(train_set),
        "held_out_texts": len(test_set),
        "target_fpr": TARGET_FPR,
        "threshold": threshold,
        "held_out_auc": round(float(roc_auc_score(is_attack, scores)), 4),
        "held_out_tpr": round(float((scores[is_attack] >= threshold).mean()), 4),
        "held_out_fpr": round(float((scores[~is_attack] >= threshold).mean()), 4),
        "held_out_flagged_by_family": {
            family: f"{sum(flags)}/{len(flags)}" for family, flags in sorted(by_family.items())
        },
    }
    return LearnedWeights(featurizer, nonzero, coef[nonzero], float(model.intercept_[0]), meta)


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else WEIGHTS_PATH
    weights = train(load_bank("attacks"), load_bank("benign"))
    weights.save(out)
    print(json.dumps({"saved": str(out), **weights.meta}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
