"""Retrieval quality on a document-QA set: hit@k, chunk-level recall@k, MRR and nDCG@10 for
dense, hybrid and hybrid + rerank, with query latency.

The set is a folder with `docs/` and `questions.jsonl`, one row per question:
`{"id", "question", "doc": file name in docs/ holding the answer, "answers": [gold strings],
"gold_paragraph"}` (as ../shared/eval-data/retrieval_qa).
Run: `python -m evals.retrieval PATH [--profile P]` (or `guardrag eval --suite retrieval`);
PATH is the set's folder or the folder holding it as `retrieval_qa/`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evals.progress import Advance
from evals.scoring import (
    RankedQuestion,
    contains_answer,
    first_rank,
    hit_at,
    mean_reciprocal_rank,
    ndcg_at,
    percentile,
)
from ingest.run import IngestReport, build_ingest_parts, ingest_folder
from rag.compose import build_reranker
from rag.schema import Hit
from rag.settings import Settings, load_settings

KS = (1, 5, 10)
# Chunks fetched per question: documents are ranked by their first chunk, and ten distinct
# documents need several chunks each.
DEPTH = max(KS) * 4


QUESTIONS_FILE = "questions.jsonl"
DOCS_FOLDER = "docs"
# The set's folder inside a folder of labelled sets (as ../shared/eval-data).
SET_FOLDER = "retrieval_qa"


def retrieval_set_in(folder: Path) -> Path | None:
    """The retrieval set `folder` names: itself when it holds questions.jsonl and docs/,
    else its retrieval_qa/ when that does; None when neither."""
    for candidate in (folder, folder / SET_FOLDER):
        if (candidate / QUESTIONS_FILE).is_file() and (candidate / DOCS_FOLDER).is_dir():
            return candidate
    return None


def find_retrieval_set(folder: Path) -> Path:
    """As `retrieval_set_in`, with a ValueError naming every file looked for, and where."""
    found = retrieval_set_in(folder)
    if found is not None:
        return found

    def seen(shown: str, there: bool) -> str:
        return f"{shown} ({'found' if there else 'missing'})"

    looked = "\n".join(
        f"  {seen(str(c / QUESTIONS_FILE), (c / QUESTIONS_FILE).is_file())} and "
        f"{seen(f'{c / DOCS_FOLDER}/', (c / DOCS_FOLDER).is_dir())}"
        for c in (folder, folder / SET_FOLDER)
    )
    raise ValueError(
        f"no retrieval set at {folder}. Looked for:\n{looked}\nA retrieval set is a folder "
        f"holding {QUESTIONS_FILE} and {DOCS_FOLDER}/: point at it, or at the folder holding "
        f"it as {SET_FOLDER}/ (README: dataset formats)."
    )


@dataclass(frozen=True)
class QAQuestion:
    id: str
    question: str
    doc: str
    answers: tuple[str, ...] = ()
    gold_paragraph: str = ""


def load_questions(dataset: Path) -> list[QAQuestion]:
    rows = []
    with (dataset / QUESTIONS_FILE).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                rows.append(
                    QAQuestion(
                        id=str(row["id"]),
                        question=row["question"],
                        doc=row["doc"],
                        answers=tuple(row.get("answers", ())),
                        gold_paragraph=row.get("gold_paragraph", ""),
                    )
                )
    return rows


@dataclass(frozen=True)
class RetrievalScores:
    mode: str
    questions: int
    hit_at: dict[int, float]
    mrr: float
    p50_ms: float
    p95_ms: float
    recall_at: dict[int, float] = field(default_factory=dict)
    ndcg10: float = 0.0

    def as_dict(self) -> dict[str, float]:
        scores: dict[str, float] = {f"hit@{k}": round(v, 4) for k, v in self.hit_at.items()}
        scores |= {f"recall@{k}": round(v, 4) for k, v in self.recall_at.items()}
        return {
            **scores,
            "mrr": round(self.mrr, 4),
            "ndcg@10": round(self.ndcg10, 4),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "questions": self.questions,
        }


def rank_documents(doc_names: Sequence[str], texts: Sequence[str], q: QAQuestion) -> RankedQuestion:
    """Where the gold document and the first answer-bearing chunk of it fall in one ranked
    list of chunks (given as each chunk's file name and text); `ms` is filled by the caller."""
    docs = list(dict.fromkeys(doc_names))
    answer_rank = next(
        (
            rank
            for rank, (name, text) in enumerate(zip(doc_names, texts, strict=True), start=1)
            if name == q.doc and contains_answer(text, q.answers)
        ),
        None,
    )
    return RankedQuestion(first_rank(docs, q.doc), answer_rank, 0.0)


def scores_from(mode: str, ranked: Sequence[RankedQuestion]) -> RetrievalScores:
    doc_ranks = [r.doc_rank for r in ranked]
    answer_ranks = [r.answer_rank for r in ranked]
    latencies = [r.ms for r in ranked]
    return RetrievalScores(
        mode=mode,
        questions=len(ranked),
        hit_at={k: hit_at(doc_ranks, k) for k in KS},
        recall_at={k: hit_at(answer_ranks, k) for k in KS},
        mrr=mean_reciprocal_rank(doc_ranks),
        ndcg10=ndcg_at(doc_ranks, 10),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
    )


def _ranked(hits: Sequence[Hit], q: QAQuestion, ms: float) -> RankedQuestion:
    ranked = rank_documents(
        [Path(h.chunk.path).name for h in hits], [h.chunk.text for h in hits], q
    )
    return RankedQuestion(ranked.doc_rank, ranked.answer_rank, ms)


@dataclass(frozen=True)
class RetrievalRun:
    scores: dict[str, RetrievalScores]
    # Modes that could not run, with why (hybrid_rerank without the reranker on disk).
    skipped: dict[str, str]
    ingest: IngestReport


def evaluate(
    dataset: Path,
    settings: Settings,
    questions: Sequence[QAQuestion] | None = None,
    advance: Advance | None = None,
) -> RetrievalRun:
    """Ingest the set's documents into `settings.data_dir`, then ask every question in each
    mode. `advance` is called once per question per mode."""
    questions = list(questions) if questions is not None else load_questions(dataset)
    parts = build_ingest_parts(settings)
    report = ingest_folder(dataset / DOCS_FOLDER, parts)
    if report.failed:
        print(f"warning: {len(report.failed)} file(s) failed: {report.failed}", file=sys.stderr)
    embedder, store = parts.embedder, parts.store
    reranker, why_not = build_reranker(settings)
    ranked: dict[str, list[RankedQuestion]] = {"dense": [], "hybrid": []}
    if reranker is not None:
        ranked["hybrid_rerank"] = []
    for q in questions:
        started = time.perf_counter()
        vector = embedder.embed_query(q.question)
        embed_ms = (time.perf_counter() - started) * 1000
        for mode in ("dense", "hybrid"):
            started = time.perf_counter()
            hits = store.search(vector, DEPTH, q.question if mode == "hybrid" else None)
            ms = embed_ms + (time.perf_counter() - started) * 1000
            ranked[mode].append(_ranked(hits, q, ms))
            if mode == "hybrid" and reranker is not None:
                started = time.perf_counter()
                reranked = reranker.rerank(q.question, hits, DEPTH)
                rerank_ms = ms + (time.perf_counter() - started) * 1000
                ranked["hybrid_rerank"].append(_ranked(reranked, q, rerank_ms))
        if advance is not None:
            advance()
    store.close()
    return RetrievalRun(
        scores={mode: scores_from(mode, rows) for mode, rows in ranked.items()},
        skipped={} if reranker is not None else {"hybrid_rerank": why_not},
        ingest=report,
    )


def main(argv: list[str]) -> None:
    try:
        dataset = find_retrieval_set(Path(argv[0]) if argv else Path("../shared/eval-data"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(profile, data_dir=Path(data_dir))
        run = evaluate(dataset, settings)
    for mode, scores in run.scores.items():
        print(json.dumps({"mode": mode, **scores.as_dict()}))
    for mode, why in run.skipped.items():
        print(json.dumps({"mode": mode, "skipped": why}))


if __name__ == "__main__":
    main(sys.argv[1:])
