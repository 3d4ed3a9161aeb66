"""Tiny random-weight models of real architectures, built by tests to prove loading code for
models that cannot be downloaded here (bge-reranker is a BERT/XLM-R sequence classifier)."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the a of to and is in lantern leave days password remote work expense glass part".split()  # noqa: SIM905
)


def tiny_cross_encoder(target: Path, seed: int = 0) -> Path:
    """A 1-layer BERT sequence classifier with one output: the shape of a bge reranker."""
    return tiny_bert_classifier(target, labels=None, seed=seed)


def tiny_bert_classifier(
    target: Path,
    labels: list[str] | None,
    seed: int = 0,
    positions: int = 512,
    initializer_range: float = 0.02,
) -> Path:
    """A 1-layer BERT sequence classifier: one output when `labels` is None (a reranker),
    else one output per label (a prompt-injection classifier such as Prompt Guard). The same
    `seed` gives the same weights, so a test scores with the same model every run. With few
    `positions` the model fails on any longer text, as a real model fails at run time. BERT's
    own `initializer_range` (0.02) leaves every score near 0.5; a wider one spreads them."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    vocab = target / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab.write_text("\n".join(tokens) + "\n")
    # The vocabulary itself, not `vocab_file=`: transformers 5 ignores that keyword and the
    # tokenizer then knew only the five special tokens (every word read as [UNK]).
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        initializer_range=initializer_range,
        num_labels=1 if labels is None else len(labels),
        id2label=None if labels is None else dict(enumerate(labels)),
        label2id=None if labels is None else {name: i for i, name in enumerate(labels)},
    )
    # A forked generator: seeding leaves the rest of the run's random state as it was.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def tiny_sentence_embedder(target: Path, seed: int = 0) -> Path:
    """A 1-layer BERT saved as a sentence-transformers model the way bge-small is: [CLS]
    pooling, then normalised, 32 dimensions. The words of WORDS are in its vocabulary, so the
    same sentence always embeds alike and different ones differ."""
    import tempfile

    from sentence_transformers import SentenceTransformer, models

    with tempfile.TemporaryDirectory() as scratch:
        # A wide initialisation: BERT's own 0.02 embeds every sentence alike (cosine 0.99999).
        encoder = tiny_bert_classifier(Path(scratch), labels=None, seed=seed, initializer_range=0.5)
        transformer = models.Transformer(str(encoder), max_seq_length=64)
        pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
        SentenceTransformer(modules=[transformer, pooling, models.Normalize()]).save(str(target))
    return target


_SENTENCES = [
    "safe unsafe S1 S2 S10 violent crimes hate speech",
    "The lantern battery lasts thirty six hours on the low setting.",
    "Staff may work remotely up to three days a week.",
    "User: how do I reset my password? Agent: open the portal and follow the link.",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|> Task: check the conversation.",
]


def tiny_llama(
    target: Path, never_ends: bool = False, hidden_size: int = 128, layers: int = 2
) -> Path:
    """A 2-layer random Llama with a 512-token BPE tokenizer and a chat template: it loads
    and serves in vLLM on CPU (head size 64, as vLLM's CPU attention requires); its output
    is noise, which is what proves that unparseable guard replies are handled.

    `never_ends`: the end-of-sequence logit is pinned at 0 while 511 random logits compete,
    so greedy decoding runs to max_tokens: a long stream to kill a server in the middle of.
    A larger `hidden_size` and more `layers` make each decoding step slower, which leaves a
    CPU server's event loop time to answer /metrics while it generates."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_SENTENCES * 20, trainer)
    from tokenizers import decoders

    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        # Head size 64, as vLLM's CPU attention requires.
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=hidden_size // 64,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    import torch

    torch.manual_seed(0)  # the same random weights every run: the same noise, reproducibly
    model = LlamaForCausalLM(config)
    if never_ends:
        with torch.no_grad():
            model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def tiny_llama_saying(target: Path, text: str) -> Path:
    """A real 1-layer Llama whose weights make greedy decoding say `text` over and over, whatever
    the prompt: a generator whose answer a test can predict without mocking the model.

    How the weights decide it: `text` is one added token; every layer's output projections
    (attention `o_proj`, MLP `down_proj`) are zero, so the residual stream at every position is
    just the token's embedding; every embedding is the same all-ones vector, so the final
    (RMS-normed) hidden state is all ones whatever the context; and only the `text` token's row
    of the unembedding is non-zero, so its logit is the one positive one. End-of-sequence never
    wins: the model says `text` until max_tokens, one streamed token each time."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tiny_llama(target, hidden_size=128, layers=1)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.add_tokens([text])
    said = tokenizer.convert_tokens_to_ids(text)
    model = LlamaForCausalLM.from_pretrained(target)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[said].fill_(0.1)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
