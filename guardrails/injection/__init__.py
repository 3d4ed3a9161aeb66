"""Prompt-injection and jailbreak detection for questions, earlier turns and document chunks.

`normalise` shows the text as a reader sees it, `rules` scores intent patterns, `head` is the
trained head on the embedder's vectors, `detector` fuses the layers into one verdict. The
names other code imports are re-exported here.
"""

from guardrails.injection.detector import (
    FLAG_AT,
    InjectionDetector,
    LayerThresholds,
    rescaled,
    use_of,
)
from guardrails.injection.head import EmbeddingHead, HeadWeights, head_folder
from guardrails.injection.normalise import decoded_spans, normalise, views_of
from guardrails.injection.rules import GENERIC_RULES, RULES, InjectionRules, Rule

__all__ = [
    "FLAG_AT",
    "GENERIC_RULES",
    "RULES",
    "EmbeddingHead",
    "HeadWeights",
    "InjectionDetector",
    "InjectionRules",
    "LayerThresholds",
    "Rule",
    "decoded_spans",
    "head_folder",
    "normalise",
    "rescaled",
    "use_of",
    "views_of",
]
