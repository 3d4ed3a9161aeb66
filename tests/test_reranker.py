from pathlib import Path

import pytest

from rag.compose import build_reranker
from rag.reranker import CrossEncoderReranker
from rag.schema import Chunk, Hit
from rag.settings import Settings
from tests.tiny_models import tiny_cross_encoder


@pytest.fixture(scope="module")
def tiny_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cross_encoder(tmp_path_factory.mktemp("tiny-reranker"))


def _hits(n: int) -> list[Hit]:
    texts = ["remote work days", "password glass", "expense part", "leave days", "the lantern"]
    return [
        Hit(Chunk(id=str(i), text=texts[i % len(texts)], path=f"d{i}"), 1.0 - i / 10)
        for i in range(n)
    ]


def test_a_reranker_named_by_local_path_loads_and_orders_by_its_own_scores(
    provisioned: Settings, tiny_reranker_dir: Path
) -> None:
    settings = provisioned.model_copy(
        update={
            "reranker": provisioned.reranker.model_copy(update={"model": str(tiny_reranker_dir)})
        }
    )
    reranker, missing = build_reranker(settings)
    assert reranker is not None and missing == ""
    ranked = reranker.rerank("how many remote days", _hits(5), top_k=3)
    assert len(ranked) == 3
    scores = [h.rerank_score for h in ranked]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_min_score_drops_weak_passages(tiny_reranker_dir: Path) -> None:
    question = "remote work days"
    everything = CrossEncoderReranker("tiny", tiny_reranker_dir).rerank(question, _hits(5), top_k=5)
    scores = [h.rerank_score or 0.0 for h in everything]
    cut = (max(scores) + min(scores)) / 2
    kept = CrossEncoderReranker("tiny", tiny_reranker_dir, min_score=cut).rerank(
        question, _hits(5), top_k=5
    )
    assert [h.chunk.id for h in kept] == [
        h.chunk.id for h in everything if (h.rerank_score or 0) >= cut
    ]
    assert 0 < len(kept) < 5


def test_an_absent_reranker_is_skipped_with_the_reason(provisioned: Settings) -> None:
    reranker, missing = build_reranker(provisioned)
    assert reranker is None
    assert "BAAI/bge-reranker-base" in missing and "models" in missing


def test_the_tiny_reranker_is_the_same_model_every_build(
    tiny_reranker_dir: Path, tmp_path: Path
) -> None:
    # Seeded weights: the tests above score with the same model on every run.
    question = "remote work days"
    first = CrossEncoderReranker("tiny", tiny_reranker_dir).rerank(question, _hits(5), top_k=5)
    rebuilt = tiny_cross_encoder(tmp_path / "again")
    again = CrossEncoderReranker("tiny", rebuilt).rerank(question, _hits(5), top_k=5)
    assert [(h.chunk.id, h.rerank_score) for h in again] == [
        (h.chunk.id, h.rerank_score) for h in first
    ]
    other = tiny_cross_encoder(tmp_path / "other-seed", seed=1)
    different = CrossEncoderReranker("tiny", other).rerank(question, _hits(5), top_k=5)
    assert [h.rerank_score for h in different] != [h.rerank_score for h in first]
