"""Answers through the real pipeline, judged against the QA set's gold answers, and the
request timings they carry: gold-answer match, citation precision, per-sentence groundedness,
refusals; per-stage latency, tokens/s and the share of everything but generation."""

from __future__ import annotations

import asyncio
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evals.progress import Advance
from evals.retrieval import QAQuestion
from evals.scoring import (
    cited_numbers,
    contains_answer,
    fuzzy_answer_score,
    percentile,
    sentences,
)
from rag.embedder import SentenceEmbedder
from rag.pipeline import AskOptions, Conversation, Pipeline
from rag.schema import Answer, Citation

# rapidfuzz partial_ratio at or above this counts as a fuzzy match: 80 accepts a dropped or
# changed word in a short answer ("7 January 1943" for "January 7, 1943" scores ~80), not a
# different one.
FUZZY_MATCH = 80.0
# Cosine similarity (all-MiniLM-L6-v2) at or above which an answer sentence counts as
# supported by a sentence of a cited passage. There is no NLI model offline; on this
# embedder paraphrases of one fact score about 0.6-0.9 and unrelated sentences on the same
# topic 0.2-0.5.
GROUNDED_SIMILARITY = 0.6
GROUNDEDNESS_METHOD = (
    f"cosine similarity ≥ {GROUNDED_SIMILARITY} between the answer sentence and a sentence of "
    "a cited passage, with the retrieval embedder (no NLI model is configured)"
)
_DECLINES = re.compile(
    r"\b(i (do not|don't|cannot|can't|am unable to) (know|find|answer|say|help|determine)"
    r"|(is|are) not (mentioned|provided|stated|given|specified)"
    r"|(does|do) not (mention|provide|say|state|contain|specify)"
    r"|no (information|mention|details?) (about|on|of|in)"
    r"|not (enough|sufficient) information)\b",
    re.IGNORECASE,
)


def declines(text: str) -> bool:
    """The model says it cannot answer from the passages (all dev questions are answerable)."""
    return bool(_DECLINES.search(text))


def supporting(citation: Citation, q: QAQuestion) -> bool:
    """The cited chunk is from the gold document and holds a gold answer string."""
    return Path(citation.path).name == q.doc and contains_answer(citation.text, q.answers)


def considered_citations(answer: Answer) -> tuple[Citation, ...]:
    """The passages the answer cites inline (`[2]`), or every source shown with it when it
    cites none: the asker sees all of them as the answer's sources."""
    numbers = cited_numbers(answer.text)
    chosen = tuple(c for c in answer.citations if c.number in numbers)
    return chosen or answer.citations


@dataclass(frozen=True)
class JudgedAnswer:
    question_id: str
    status: str
    text: str
    exact: bool
    fuzzy_score: float
    citations: int
    supporting: int
    sentences: int
    grounded_sentences: int
    refused: bool
    tokens: int | None
    # Sentences that say again what an earlier sentence of the same answer said.
    repeated_sentences: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)
    first_token_ms: float | None = None


def grounded_count(
    answer_sentences: Sequence[str],
    passages: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
) -> int:
    """How many answer sentences some sentence of the passages supports (see GROUNDED_*)."""
    evidence = [s for p in passages for s in sentences(p)]
    if not answer_sentences or not evidence:
        return 0
    vectors = embed([*answer_sentences, *evidence])
    claims, support = vectors[: len(answer_sentences)], vectors[len(answer_sentences) :]
    # Normalised embeddings: the dot product is the cosine.
    best = (claims @ support.T).max(axis=1)
    return int((best >= GROUNDED_SIMILARITY).sum())


def repeated_sentence_count(answer_sentences: Sequence[str]) -> int:
    """Sentences equal (case and spacing aside) to an earlier one of the same answer."""
    seen: set[str] = set()
    repeats = 0
    for sentence in answer_sentences:
        key = " ".join(sentence.lower().split())
        repeats += key in seen
        seen.add(key)
    return repeats


def judge(
    answer: Answer,
    q: QAQuestion,
    embedder: SentenceEmbedder,
    count_tokens: Callable[[str, str], int | None] | None,
) -> JudgedAnswer:
    """One answer against its question's gold; `count_tokens(text, model name)` counts the
    answer's tokens for tokens/s (None: not counted)."""
    answered = answer.status == "answered"
    cited = considered_citations(answer) if answered else ()
    claims = sentences(answer.text) if answered else []
    return JudgedAnswer(
        question_id=q.id,
        status=answer.status,
        text=answer.text,
        exact=answered and contains_answer(answer.text, q.answers),
        fuzzy_score=fuzzy_answer_score(answer.text, q.answers) if answered else 0.0,
        citations=len(cited),
        supporting=sum(1 for c in cited if supporting(c, q)),
        sentences=len(claims),
        grounded_sentences=grounded_count(
            claims, [c.text for c in cited], embedder.embed_documents
        ),
        refused=answer.status in ("blocked", "refused") or (answered and declines(answer.text)),
        tokens=count_tokens(answer.text, answer.route.model)
        if count_tokens and answered and answer.route
        else None,
        repeated_sentences=repeated_sentence_count(claims),
        stages_ms={s.name: s.ms for s in answer.stages if s.status == "ran"},
        first_token_ms=answer.first_token_ms,
    )


async def ask_all(
    pipeline: Pipeline, questions: Sequence[QAQuestion], advance: Advance | None = None
) -> list[Answer]:
    """Each question in a fresh conversation, one at a time (the timings are per request)."""
    answers = []
    for q in questions:
        answers.append(await pipeline.ask(q.question, Conversation(), AskOptions()))
        if advance is not None:
            advance()
    return answers


def ask_all_then_stop(
    pipeline: Pipeline, questions: Sequence[QAQuestion], advance: Advance | None = None
) -> list[Answer]:
    """`ask_all` on a fresh event loop; in-process engines stop inside that loop, because
    vLLM's shutdown waits on tasks of the loop that served the requests."""
    from rag.compose import shutdown_engines

    async def run() -> list[Answer]:
        try:
            return await ask_all(pipeline, questions, advance)
        finally:
            shutdown_engines()

    return asyncio.run(run())


@dataclass(frozen=True)
class AnswerScores:
    questions: int
    exact: float
    fuzzy: float
    fuzzy_score: float
    citation_precision: float
    supported: float
    groundedness: float
    refusal_rate: float
    blocked_rate: float
    # Answers that repeat a sentence of their own, and repeated sentences per answer.
    repeating: float = 0.0
    repeats_per_answer: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def answer_scores(judged: Sequence[JudgedAnswer]) -> AnswerScores:
    n = len(judged)
    answered = [j for j in judged if j.status == "answered"]
    cited = sum(j.citations for j in answered)
    claims = sum(j.sentences for j in answered)
    return AnswerScores(
        questions=n,
        exact=sum(j.exact for j in judged) / n,
        fuzzy=sum(j.fuzzy_score >= FUZZY_MATCH for j in judged) / n,
        fuzzy_score=statistics.fmean(j.fuzzy_score for j in judged),
        # Micro averages: every citation and every sentence weighs the same.
        citation_precision=sum(j.supporting for j in answered) / cited if cited else 0.0,
        supported=sum(j.supporting > 0 for j in answered) / n,
        groundedness=sum(j.grounded_sentences for j in answered) / claims if claims else 0.0,
        refusal_rate=sum(j.refused for j in judged) / n,
        blocked_rate=sum(j.status == "blocked" for j in judged) / n,
        repeating=sum(j.repeated_sentences > 0 for j in answered) / len(answered)
        if answered
        else 0.0,
        repeats_per_answer=sum(j.repeated_sentences for j in answered) / len(answered)
        if answered
        else 0.0,
    )


@dataclass(frozen=True)
class LatencyScores:
    requests: int
    stages: dict[str, tuple[float, float]]  # stage → (p50 ms, p95 ms), over requests it ran in
    first_token: tuple[float, float] | None
    tokens_per_s: float | None
    non_generation_share: float | None


def latency_scores(judged: Sequence[JudgedAnswer]) -> LatencyScores:
    names = list(dict.fromkeys(name for j in judged for name in j.stages_ms))
    stages = {}
    for name in names:
        values = [j.stages_ms[name] for j in judged if name in j.stages_ms]
        stages[name] = (percentile(values, 50), percentile(values, 95))
    first = [j.first_token_ms for j in judged if j.first_token_ms is not None]
    generated = [j for j in judged if "generate" in j.stages_ms and j.tokens is not None]
    generate_s = sum(j.stages_ms["generate"] for j in generated) / 1000
    shares = [
        (j.stages_ms["total"] - j.stages_ms["generate"]) / j.stages_ms["total"]
        for j in judged
        if "generate" in j.stages_ms and j.stages_ms.get("total")
    ]
    return LatencyScores(
        requests=len(judged),
        stages=stages,
        first_token=(percentile(first, 50), percentile(first, 95)) if first else None,
        tokens_per_s=sum(j.tokens or 0 for j in generated) / generate_s if generate_s else None,
        non_generation_share=statistics.fmean(shares) if shares else None,
    )
