"""The answer cache: exact (normalised question, route, retrieved chunk ids, model, recent
turns) and semantic (a paraphrase over a similarity threshold that retrieved the same chunks),
with a time to live, scoped per user.

Chunk ids are content hashes, so when ingestion changes or removes a chunk an entry used, the
key no longer matches: entries are invalidated by construction, also across processes.
Conversations holding pseudonymised personal data are never cached (the pipeline decides, in
`_cache_key`), and entries are per user, so nobody is served another person's restored values.

`AnswerCache` keeps entries in this process; `RedisAnswerCache` keeps them in a Redis every
process shares (`cache.url`), under hashed keys and without passage text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import redis
from cachetools import TTLCache

from guardrails.verdict import Verdict
from rag.schema import ChatMessage, Citation, Route

log = logging.getLogger(__name__)


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


def answer_to_json(answer: CachedAnswer) -> str:
    """What a shared store keeps of an answer. Passages stay in the document store (a hit
    cites the chunks the current retrieval found, which the key guarantees are the same), and
    a verdict's sanitized text never leaves the process."""
    return json.dumps(
        {
            "text": answer.text,
            "route": asdict(answer.route),
            "citations": [asdict(replace(c, text="")) for c in answer.citations],
            "output_verdict": asdict(replace(answer.output_verdict, sanitized_text=None)),
            "stored_at": answer.stored_at,
        }
    )


def answer_from_json(text: str | bytes) -> CachedAnswer:
    data = json.loads(text)
    verdict = data["output_verdict"]
    return CachedAnswer(
        text=data["text"],
        route=Route(**data["route"]),
        citations=tuple(Citation(**c) for c in data["citations"]),
        output_verdict=Verdict(**{**verdict, "categories": tuple(verdict["categories"])}),
        stored_at=data["stored_at"],
    )


def _hashed(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class RedisAnswerCache(AnswerCache):
    """The answer cache in a Redis that every guardrag process shares: one process's answer
    is the next one's hit. Redis expires entries after ttl_s and bounds memory by its own
    maxmemory policy (deploy/ sets one), so max_entries does not apply.

    Keys are hashes (`<prefix>entry:<CacheKey.digest>`, a user's index under the hash of
    their name): no question, user name or passage is readable in Redis. To the pipeline it
    is an AnswerCache (the same four methods); none of the in-memory one's state is used.
    A Redis that fails mid-request makes a miss, logged, never a failed answer.
    """

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: float,
        semantic_threshold: float | None,
        prefix: str = "guardrag:answers:v1:",
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.semantic_threshold = semantic_threshold
        self.prefix = prefix
        self._ttl_ms = max(1, int(ttl_s * 1000))

    def _entry_key(self, digest: str) -> str:
        return f"{self.prefix}entry:{digest}"

    def _scope_key(self, key: CacheKey) -> str:
        return f"{self.prefix}scope:{_hashed(*key.scope)}"

    def _user_key(self, user: str) -> str:
        return f"{self.prefix}user:{_hashed(user)}"

    def __len__(self) -> int:
        return sum(1 for _ in self.client.scan_iter(match=f"{self.prefix}entry:*", count=1000))

    def get(self, key: CacheKey, vector: np.ndarray | None) -> CacheHit | None:
        try:
            return self._get(key, vector)
        except redis.RedisError as exc:
            log.warning("answer cache in Redis unavailable, treated as a miss: %s", exc)
            return None

    def _get(self, key: CacheKey, vector: np.ndarray | None) -> CacheHit | None:
        exact = self.client.get(self._entry_key(key.digest))
        if exact is not None:
            return CacheHit(answer_from_json(exact), "exact", 1.0)
        if vector is None or self.semantic_threshold is None:
            return None
        scope_key = self._scope_key(key)
        stored: dict[bytes, bytes] = self.client.hgetall(scope_key)  # type: ignore[assignment]
        if not stored:
            return None
        digests = list(stored)
        entries = self.client.mget([self._entry_key(d.decode()) for d in digests])
        expired = [d for d, entry in zip(digests, entries, strict=True) if entry is None]
        if expired:
            self.client.hdel(scope_key, *expired)
        best: tuple[float, bytes | str] | None = None
        for digest, entry in zip(digests, entries, strict=True):
            if entry is None:
                continue
            similarity = float(np.dot(np.frombuffer(stored[digest], dtype=np.float32), vector))
            if similarity >= self.semantic_threshold and (best is None or similarity > best[0]):
                best = (similarity, entry)
        if best is None:
            return None
        return CacheHit(answer_from_json(best[1]), "semantic", best[0])

    def put(self, key: CacheKey, vector: np.ndarray | None, answer: CachedAnswer) -> None:
        entry_key, user_key = self._entry_key(key.digest), self._user_key(key.user)
        writes = self.client.pipeline(transaction=True)
        writes.set(entry_key, answer_to_json(answer), px=self._ttl_ms)
        writes.sadd(user_key, entry_key)
        if vector is not None:
            scope_key = self._scope_key(key)
            writes.hset(scope_key, key.digest, np.asarray(vector, dtype=np.float32).tobytes())
            writes.pexpire(scope_key, self._ttl_ms)
            writes.sadd(user_key, scope_key)
        # The index lives as long as the newest entry it names.
        writes.pexpire(user_key, self._ttl_ms)
        try:
            writes.execute()
        except redis.RedisError as exc:
            log.warning("answer cache in Redis unavailable, answer not kept: %s", exc)

    def clear_user(self, user: str) -> int:
        """Forget one user's entries, in every process that shares this Redis."""
        user_key = self._user_key(user)
        keys = [k.decode() for k in self.client.smembers(user_key)]  # type: ignore[union-attr]
        entries = [k for k in keys if k.startswith(f"{self.prefix}entry:")]
        removed = int(self.client.delete(*entries)) if entries else 0  # type: ignore[arg-type]
        self.client.delete(user_key, *[k for k in keys if k not in entries])
        return removed
