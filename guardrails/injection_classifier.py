"""Classifier injection layer: a prompt-injection sequence classifier from disk (e.g.
meta-llama/Llama-Prompt-Guard-2-86M, protectai/deberta-v3-base-prompt-injection-v2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from guardrails.injection_exemplars import windows

# Label names meaning "nothing wrong"; every other label counts as an attack.
_BENIGN_LABELS = {"benign", "safe", "label_0", "legit", "legitimate", "normal"}


class InjectionClassifier:
    name = "classifier"

    def __init__(self, model_name: str, path: Path, max_tokens: int = 512) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_name = model_name
        self.max_tokens = max_tokens
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True
        )
        self._model.eval()
        labels = {int(i): str(name).lower() for i, name in self._model.config.id2label.items()}
        benign = [i for i, name in labels.items() if name in _BENIGN_LABELS]
        # Two-label models without names (LABEL_0/LABEL_1) put the attack class last.
        self._benign_index = benign[0] if benign else 0

    def score(self, texts: Sequence[str]) -> float:
        """The highest attack probability over the windows of every view."""
        pieces = [w for text in texts for w in windows(text, max_words=200)]
        with self._torch.inference_mode():
            batch = self._tokenizer(
                pieces,
                truncation=True,
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            probabilities = self._model(**batch).logits.softmax(dim=-1)
        attack = 1.0 - probabilities[:, self._benign_index]
        return round(float(attack.max()), 4)
