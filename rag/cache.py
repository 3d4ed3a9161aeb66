"""The answer cache: exact (normalised question, route, retrieved chunk ids, model, recent
turns) and semantic (a paraphrase over a similarity threshold that retrieved the same chunks),
with a time to live, scoped per user.

Chunk ids are content hashes, so when ingestion changes or removes a chunk an entry used, the
key no longer matches: entries are invalidated by construction, also across processes.
Conversations holding pseudonymised personal data are never cached (the pipeline decides, in
`_cache_key`), and entries are per user, so nobody is served another person's restored values.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cachetools import TTLCache

from guardrails.verdict import Verdict
from rag.schema import ChatMessage, Citation, Route


@dataclass(frozen=True)
class CacheKey:
    user: str
    question: str  # normalised
    task: str
    model: str
    chunk_ids: tuple[str, ...]
    context: str  # a hash of what else the model saw: system prompt and earlier turns

    @property
    def digest(self) -> str:
        joined = "\x00".join(
            [self.user, self.question, self.task, self.model, *self.chunk_ids, self.context]
        )
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def scope(self) -> tuple[str, str, str, tuple[str, ...], str]:
        """What a semantic match must share exactly: everything but the question's words."""
        return (self.user, self.task, self.model, self.chunk_ids, self.context)


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    route: Route
    citations: tuple[Citation, ...]
    output_verdict: Verdict
    stored_at: float


@dataclass(frozen=True)
class CacheHit:
    answer: CachedAnswer
    kind: str  # "exact" or "semantic"
    similarity: float


_SPACE = re.compile(r"\s+")


def normalise_question(question: str) -> str:
    return _SPACE.sub(" ", question).strip().rstrip("?!. ").casefold()


def context_digest(messages: Sequence[ChatMessage]) -> str:
    return hashlib.sha256(
        "\x00".join(f"{m.role}:{m.content}" for m in messages).encode()
    ).hexdigest()


class AnswerCache:
    """Thread-safe: the chat and the API serve requests from several threads."""

    def __init__(self, ttl_s: float, max_entries: int, semantic_threshold: float | None) -> None:
        self.ttl_s = ttl_s
        self.semantic_threshold = semantic_threshold
        self._entries: TTLCache[str, CachedAnswer] = TTLCache(maxsize=max_entries, ttl=ttl_s)
        # Per scope: the question vectors of its entries, for paraphrase lookups.
        self._vectors: dict[tuple[object, ...], list[tuple[np.ndarray, str]]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._puts_since_pruning = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: CacheKey, vector: np.ndarray | None) -> CacheHit | None:
        with self._lock:
            exact = self._entries.get(key.digest)
            if exact is not None:
                return CacheHit(exact, "exact", 1.0)
            if vector is None or self.semantic_threshold is None:
                return None
            best: tuple[float, str] | None = None
            alive = []
            for stored_vector, digest in self._vectors.get(key.scope, []):
                if digest not in self._entries:
                    continue  # expired
                alive.append((stored_vector, digest))
                similarity = float(np.dot(stored_vector, vector))
                if similarity >= self.semantic_threshold and (best is None or similarity > best[0]):
                    best = (similarity, digest)
            if key.scope in self._vectors:
                self._vectors[key.scope] = alive
            answer = None if best is None else self._entries.get(best[1])
            if best is None or answer is None:
                return None
            return CacheHit(answer, "semantic", best[0])

    def put(self, key: CacheKey, vector: np.ndarray | None, answer: CachedAnswer) -> None:
        with self._lock:
            self._entries[key.digest] = answer
            self._by_user.setdefault(key.user, set()).add(key.digest)
            if vector is not None:
                self._vectors.setdefault(key.scope, []).append((vector, key.digest))
            self._puts_since_pruning += 1
            if self._puts_since_pruning >= self._entries.maxsize:
                self._forget_evicted()
                self._puts_since_pruning = 0

    def _forget_evicted(self) -> None:
        """Drop side-table references to entries the TTL cache has expired or evicted."""
        self._entries.expire()
        alive = set(self._entries.keys())
        self._by_user = {u: d & alive for u, d in self._by_user.items() if d & alive}
        self._vectors = {
            scope: kept
            for scope, vectors in self._vectors.items()
            if (kept := [(v, d) for v, d in vectors if d in alive])
        }

    def clear_user(self, user: str) -> int:
        """Forget one user's entries (e.g. when they delete their documents or history)."""
        with self._lock:
            digests = self._by_user.pop(user, set())
            for digest in digests:
                self._entries.pop(digest, None)
            for scope in [s for s in self._vectors if s[0] == user]:
                del self._vectors[scope]
            return len(digests)
