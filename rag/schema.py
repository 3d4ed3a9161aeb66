"""The plain values that pass between stages of a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from guardrails.verdict import Verdict


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    path: str
    section: str = ""
    page: int | None = None
    start: int = 0
    end: int = 0
    content_hash: str = ""
    file_hash: str = ""
    # The ingest-time injection verdict, stored with the chunk.
    injection_score: float = 0.0
    injection_categories: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        return bool(self.injection_categories)

    @property
    def location(self) -> str:
        where = [self.path]
        if self.page is not None:
            where.append(f"p. {self.page}")
        if self.section:
            where.append(self.section)
        return " · ".join(where)


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float
    rerank_score: float | None = None


@dataclass(frozen=True)
class Citation:
    # The passage's number in the prompt, which is also its rank: passages are given to the
    # model in rank order (the reranker's when it ran, else the retrieval's).
    number: int
    chunk_id: str
    path: str
    section: str
    page: int | None
    # The raw retrieval score: reciprocal-rank fusion in hybrid mode (Qdrant gives first place
    # in a list 1/60, so at most 0.033), cosine similarity in dense mode. It orders passages;
    # a reader can do little with it.
    score: float
    text: str
    # The reranker's raw score, None when no reranker ran. For a one-output cross-encoder
    # (bge-reranker) sentence-transformers applies a sigmoid, so it is a 0-1 relevance.
    rerank_score: float | None = None

    @property
    def location(self) -> str:
        page = f" p. {self.page}" if self.page is not None else ""
        section = f" · {self.section}" if self.section else ""
        return f"{self.path}{page}{section}"


@dataclass(frozen=True)
class Route:
    task: str
    model: str
    confidence: float
    reason: str
    runner_up: str | None = None


StageStatus = Literal["ran", "skipped", "cancelled", "failed"]


@dataclass(frozen=True)
class StageReport:
    name: str
    status: StageStatus
    ms: float
    detail: str = ""
    # When the stage started, in ms after the request did (for traces and timelines).
    start_ms: float = 0.0


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


# busy: every replica was saturated and the queue full; the request may be retried.
AnswerStatus = Literal["answered", "blocked", "refused", "failed", "busy"]


@dataclass(frozen=True)
class Answer:
    request_id: str
    question: str
    text: str
    status: AnswerStatus
    citations: tuple[Citation, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    route: Route | None = None
    stages: tuple[StageReport, ...] = ()
    # Exactly what the model was sent (pseudonymised), for inspection and tests.
    prompt: tuple[ChatMessage, ...] = field(default=(), repr=False)
    first_token_ms: float | None = None
    # Tokens as the model counted them; None when no generator reported any (blocked before
    # generation, a cache hit, a fan-out or chain, a server that sends no usage).
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def timings_ms(self) -> dict[str, float]:
        return {s.name: s.ms for s in self.stages}


@dataclass(frozen=True)
class TextDelta:
    """More answer text for the asker (placeholders already restored)."""

    text: str


@dataclass(frozen=True)
class Retraction:
    """Everything streamed so far must be taken back; the final answer replaces it."""

    reason: str


@dataclass(frozen=True)
class StageEvent:
    """A stage finished; lets a UI show progress before the answer."""

    report: StageReport


@dataclass(frozen=True)
class Final:
    answer: Answer


StreamEvent = TextDelta | Retraction | StageEvent | Final
