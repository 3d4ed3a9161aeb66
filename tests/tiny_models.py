"""Tiny random-weight models of real architectures, built by tests to prove loading code for
models that cannot be downloaded here (bge-reranker is a BERT/XLM-R sequence classifier)."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the a of to and is in lantern leave days password remote work expense glass part".split()  # noqa: SIM905
)


def tiny_cross_encoder(target: Path) -> Path:
    """A 1-layer BERT sequence classifier with one output: the shape of a bge reranker."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    vocab = target / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
