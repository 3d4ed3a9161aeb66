"""What the sources panel shows of each cited passage: its rank, and the reranker's relevance
when one ran, never the fused retrieval score (about 0.03 for every passage); the raw scores
stay in the answer's JSON, the details panel and history. Real parts: the embedder and
embedded Qdrant for the fused scores, a tiny cross-encoder for the reranker's."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from ingest.run import build_ingest_parts, ingest_folder
from rag.pipeline import citations_of
from rag.reranker import CrossEncoderReranker
from rag.schema import Answer, Hit
from rag.settings import Settings
from tests.conftest import local_settings
from tests.tiny_models import tiny_cross_encoder
from ui.api import answer_extra
from ui.chat import _panels
from ui.cli import answer_json
from ui.history import HistoryStore, StoredTurn
from ui.render import AnswerView, SourceView, answer_view, details_markdown

QUESTION = "How many remote work days are allowed?"
DOCS = {
    "remote.md": "# Remote work\n\nStaff may work remotely up to three days a week.\n",
    "leave.md": "# Leave\n\nEveryone gets twenty-five days of annual leave.\n",
    "lantern.md": "# Lantern\n\nThe lantern battery lasts thirty six hours on low.\n",
}


@pytest.fixture(scope="module")
def fused_hits(provisioned: Settings, tmp_path_factory: pytest.TempPathFactory) -> list[Hit]:
    """Hybrid (dense + BM25, fused by reciprocal rank) hits for QUESTION, from a real store."""
    folder = tmp_path_factory.mktemp("sources-docs")
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    settings = local_settings(tmp_path_factory.mktemp("sources-data"))
    assert settings.retrieval.mode == "hybrid"
    parts = build_ingest_parts(settings)
    try:
        report = ingest_folder(folder, parts)
        assert not report.failed, report.failed
        vector = parts.embedder.embed_query(QUESTION)
        hits = parts.store.search(vector, 3, QUESTION)
    finally:
        parts.store.close()
    assert len(hits) == 3
    return hits


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> CrossEncoderReranker:
    return CrossEncoderReranker("tiny", tiny_cross_encoder(tmp_path_factory.mktemp("reranker")))


def _answer(hits: list[Hit]) -> Answer:
    return Answer(
        request_id="r1",
        question=QUESTION,
        text="Up to three days [1].",
        status="answered",
        citations=citations_of(hits),
    )


def test_the_source_label_shows_the_rank_not_the_fused_score(fused_hits: list[Hit]) -> None:
    # The number the panel used to show: reciprocal-rank fusion, 1/60 + 1/60 at best.
    assert all(0 < h.score <= 2 / 60 + 1e-6 for h in fused_hits), [h.score for h in fused_hits]
    sources = answer_view(_answer(fused_hits), "Up to three days [1].").sources
    labels = [s.label for s in sources]
    assert labels[0].startswith("[1] ") and labels[0].endswith("(rank 1)")
    assert [s.label.endswith(f"(rank {n})") for n, s in enumerate(sources, 1)] == [True] * 3
    assert not any("score" in label or "relevance" in label for label in labels), labels
    shown = " ".join(labels)
    for hit in fused_hits:
        assert f"{hit.score:.3f}" not in shown and f"{hit.score:.2f}" not in shown


def test_with_a_reranker_the_label_shows_its_relevance_as_a_percentage(
    fused_hits: list[Hit], reranker: CrossEncoderReranker
) -> None:
    reranked = reranker.rerank(QUESTION, fused_hits, top_k=3)
    scores = [h.rerank_score for h in reranked]
    # sentence-transformers puts a sigmoid on a one-output cross-encoder: 0-1, not a logit.
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores), scores
    sources = answer_view(_answer(reranked), "").sources
    for n, (source, score) in enumerate(zip(sources, scores, strict=True), start=1):
        assert source.label.endswith(f"(rank {n}, relevance {score:.0%})"), source.label
        assert re.search(r"relevance \d{1,3}%\)$", source.label)


def test_a_reranker_score_outside_0_1_is_shown_raw_and_named_so() -> None:
    # A cross-encoder saved with an identity activation returns logits: no percentage of those.
    source = SourceView(2, "faq.md", 0.0161, rerank_score=5.031)
    assert source.label == "[2] faq.md (rank 2, reranker score 5.03)"
    assert "%" not in source.label


def test_the_answer_json_and_the_details_panel_keep_both_raw_scores(
    fused_hits: list[Hit], reranker: CrossEncoderReranker
) -> None:
    reranked = reranker.rerank(QUESTION, fused_hits, top_k=3)
    answer = _answer(reranked)
    # What `guardrag ask --json` prints, and the API's `guardrag` field.
    for citations in (
        json.loads(json.dumps(answer_json(answer)))["citations"],
        json.loads(json.dumps(answer_extra(answer)))["citations"],
    ):
        assert [c["score"] for c in citations] == [h.score for h in reranked]
        assert [c["rerank_score"] for c in citations] == [h.rerank_score for h in reranked]
        assert [c["number"] for c in citations] == [1, 2, 3]
    view = answer_view(answer, "")
    details = details_markdown(view.route, view.stages, view.first_token_ms, view.sources)
    top = reranked[0]
    assert f"| [1] | {top.score:.4f} | {top.rerank_score:.4f} |" in details
    # The chat's panels pass the sources on to the details panel.
    assert _panels(view)[3] == details


def test_without_a_reranker_the_details_panel_says_none_ran(fused_hits: list[Hit]) -> None:
    view = answer_view(_answer(fused_hits), "")
    details = details_markdown(None, (), None, view.sources)
    assert f"| [1] | {fused_hits[0].score:.4f} | — |" in details


def test_a_source_location_never_reaches_the_markdown_details_panel() -> None:
    # A location holds a document's own section heading; the details panel renders Markdown.
    heading = "![x](https://exfil.invalid/leak)"
    details = details_markdown(None, (), None, (SourceView(1, f"a.md · {heading}", 0.03),))
    assert "exfil.invalid" not in details


def test_a_history_row_stored_before_rerank_scores_still_loads(
    tmp_path: Path, fused_hits: list[Hit], reranker: CrossEncoderReranker
) -> None:
    history = HistoryStore(tmp_path / "history.sqlite")
    conversation = history.create("alice", "Remote days")
    # A row as the previous release wrote it: sources had number, location, score and text.
    old_details = {
        "request_id": "old-1",
        "status": "answered",
        "text": "Up to three days [1].",
        "chips": [],
        "sources": [
            {"number": 1, "location": "remote.md · Remote work", "score": 0.0328, "text": ""}
        ],
        "route": {"task": "document_qa", "model": "smollm2", "confidence": 0.9, "reason": "r"},
        "stages": [{"name": "total", "status": "ran", "ms": 12.5, "detail": "", "start_ms": 0.0}],
        "first_token_ms": 3.0,
    }
    with sqlite3.connect(history.path) as db:
        db.execute(
            "INSERT INTO messages (conversation_id, ordinal, role, content, request_id, details) "
            "VALUES (?, 0, 'assistant', 'Up to three days [1].', 'old-1', ?)",
            (conversation, json.dumps(old_details)),
        )
    # And one written now, with a reranker's score.
    new_view = answer_view(_answer(reranker.rerank(QUESTION, fused_hits, top_k=3)), "New.")
    history.append("alice", conversation, [StoredTurn("assistant", "New.", "r1", new_view)])

    old, new = (t.details for t in history.turns("alice", conversation))
    assert isinstance(old, AnswerView) and isinstance(new, AnswerView)
    (source,) = old.sources
    assert (source.score, source.rerank_score) == (0.0328, None)
    assert source.label == "[1] remote.md · Remote work (rank 1)"
    assert old.route is not None and old.stages[0].ms == 12.5
    assert [s.rerank_score for s in new.sources] == [s.rerank_score for s in new_view.sources]
    assert "relevance" in new.sources[0].label
