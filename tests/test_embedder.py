"""The embedder's precision: bfloat16 document batches must retrieve as float32 ones do."""

from pathlib import Path

import numpy as np
import pytest

from rag.embedder import SentenceEmbedder
from rag.models import resolve_model
from rag.precision import resolve_device
from rag.settings import Settings
from tests.conftest import eval_rows


@pytest.fixture(scope="module")
def minilm(provisioned: Settings) -> Path:
    path = resolve_model(provisioned.embedder.model, provisioned.models_dir)
    assert path is not None
    return path


def test_bfloat16_document_batches_keep_the_float32_vectors_and_their_ranking(
    minilm: Path,
) -> None:
    rows = eval_rows("retrieval_qa/questions.jsonl")
    paragraphs = sorted({str(r["gold_paragraph"]) for r in rows})
    questions = [str(r["question"]) for r in rows]
    exact = SentenceEmbedder("minilm", minilm, precision="float32")
    fast = SentenceEmbedder("minilm", minilm, precision="bfloat16")
    assert exact.document_dtype is None and fast.document_dtype is not None

    reference = exact.embed_documents(paragraphs)
    candidate = fast.embed_documents(paragraphs)

    assert candidate.dtype == np.float32
    assert not np.array_equal(candidate, reference), "bfloat16 autocast did not take effect"
    assert np.min(np.sum(candidate * reference, axis=1)) > 0.9999
    queries = np.stack([exact.embed_query(q) for q in questions])
    assert np.array_equal(
        np.argmax(queries @ candidate.T, axis=1), np.argmax(queries @ reference.T, axis=1)
    )


def test_the_bare_encode_runs_in_the_precision_documents_get(minilm: Path) -> None:
    texts = ["The lantern team ships on Fridays.", "Expenses above 500 need a second approval."]
    fast = SentenceEmbedder("minilm", minilm, precision="bfloat16")
    assert np.array_equal(fast.encode_bare(texts), fast.embed_documents(texts))


def test_a_cuda_device_without_a_gpu_is_refused_with_what_to_set() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ValueError, match=r"device is cuda.*auto or cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


def test_a_single_text_is_embedded_in_float32(minilm: Path) -> None:
    # The router embeds each question alone: bfloat16's casts would only slow it down.
    question = ["How many remote days are allowed?"]
    fast = SentenceEmbedder("minilm", minilm, precision="bfloat16")
    exact = SentenceEmbedder("minilm", minilm, precision="float32")
    assert np.array_equal(fast.embed_documents(question), exact.embed_documents(question))


def test_two_threads_asking_for_one_question_embed_it_once(minilm: Path) -> None:
    """The input guards (the injection head) and retrieval embed the same question at the
    same time: the second waits for the first's vector instead of running the model again."""
    import threading

    embedder = SentenceEmbedder("minilm", minilm)
    model = embedder.load()
    encode = model.encode
    calls: list[str] = []
    first_is_encoding, second_encodes_too = threading.Event(), threading.Event()

    def counted_encode(texts, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(texts[0])
        if len(calls) == 1:
            first_is_encoding.set()
            # Room for a second caller to reach the model too (it does without the wait).
            second_encodes_too.wait(timeout=2)
        else:
            second_encodes_too.set()
        return encode(texts, **kwargs)

    model.encode = counted_encode  # type: ignore[method-assign]
    question = "Who approves travel expenses above the limit?"
    vectors: list[np.ndarray] = []
    first = threading.Thread(target=lambda: vectors.append(embedder.embed_query(question)))
    first.start()
    assert first_is_encoding.wait(timeout=60)
    second = threading.Thread(target=lambda: vectors.append(embedder.embed_query(question)))
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)
    assert len(calls) == 1, calls
    assert len(vectors) == 2 and vectors[0] is vectors[1]
    # The same question later is answered from the kept vectors; a new one is embedded.
    assert embedder.embed_query(question) is vectors[0]
    embedder.embed_query("Which office hosts the offsite?")
    assert len(calls) == 2
