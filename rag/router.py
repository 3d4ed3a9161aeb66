"""Which task a question is and which model answers it: similarity to task exemplars, embedded
with the retrieval embedder, nudged by the caller's task hints; low confidence takes the default.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rag.schema import Route
from rag.settings import RouterSettings

EXEMPLARS_PATH = Path(__file__).resolve().parent / "router_exemplars.jsonl"
Embed = Callable[[Sequence[str]], np.ndarray]

# Exemplar banks are embedded once per process and embedder (and kept on disk when a cache
# folder is given), keyed by a digest of the embedder's name and the texts.
_BANK_VECTORS: dict[str, np.ndarray] = {}


class RouterError(ValueError):
    """Router settings or exemplars that cannot be used; the message says what to change."""


class DocumentEmbedder(Protocol):
    name: str

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class TaskExemplar:
    task: str
    text: str


@dataclass(frozen=True)
class TaskTarget:
    """Where a task goes (a name in generation.models), and the hint words that lean towards
    it: a hint matches a keyword it starts with (`classif` covers classify and classification).
    """

    model: str
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskScore:
    task: str
    probability: float


def load_exemplars(path: Path = EXEMPLARS_PATH) -> list[TaskExemplar]:
    """Rows `{"task": ..., "text": ...}`, one a line."""
    try:
        with path.open(encoding="utf-8") as rows:
            return [TaskExemplar(**json.loads(line)) for line in rows if line.strip()]
    except (OSError, ValueError, TypeError) as exc:
        raise RouterError(
            f"router exemplars {path} cannot be read ({exc}); each line must be a JSON object "
            'like {"task": "code", "text": "Write a SQL query that ..."}'
        ) from exc


def _task_name(word: str) -> str:
    return re.sub(r"[\s-]+", "_", word.strip().lower())


def _bank_vectors(
    embed: Embed, texts: Sequence[str], embedder_name: str, cache_dir: Path | None
) -> np.ndarray:
    digest = hashlib.sha256("\x00".join([embedder_name, *texts]).encode()).hexdigest()[:16]
    if digest in _BANK_VECTORS:
        return _BANK_VECTORS[digest]
    cached = cache_dir / f"router-exemplars-{digest}.npy" if cache_dir else None
    if cached is not None and cached.exists():
        vectors = np.load(cached)
    else:
        vectors = np.asarray(embed(list(texts)), dtype=np.float32)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, vectors)
    _BANK_VECTORS[digest] = vectors
    return vectors


class TaskRouter:
    """Scores each task by the mean cosine similarity of the question to its `neighbours`
    nearest exemplars, turns the scores into probabilities (softmax at `temperature`), and
    routes to the most likely task when its probability reaches `min_confidence`."""

    def __init__(
        self,
        embed: Embed,
        exemplars: Sequence[TaskExemplar],
        tasks: Mapping[str, TaskTarget],
        default_task: str,
        default_model: str,
        known_models: Collection[str],
        min_confidence: float = 0.4,
        neighbours: int = 3,
        temperature: float = 0.02,
        hint_weight: float = 0.05,
        cache_dir: Path | None = None,
        embedder_name: str = "",
    ) -> None:
        _require_known_models(tasks, default_model, known_models)
        if not exemplars:
            raise RouterError("the router has no exemplars: give at least one per task")
        if neighbours < 1 or temperature <= 0:
            raise RouterError(
                f"router.neighbours must be ≥ 1 and router.temperature > 0 "
                f"(got {neighbours} and {temperature})"
            )
        self._embed = embed
        self.tasks = dict(tasks)
        self.default_task = default_task
        self.default_model = default_model
        self.min_confidence = min_confidence
        self.neighbours = neighbours
        self.temperature = temperature
        self.hint_weight = hint_weight
        # Every task with exemplars is scored, mapped in settings or not (unmapped ones go to
        # the default model); a mapped task without exemplars is reachable by hints only.
        self.scored_tasks = tuple(dict.fromkeys(e.task for e in exemplars))
        vectors = _bank_vectors(embed, [e.text for e in exemplars], embedder_name, cache_dir)
        self._task_vectors = [
            vectors[[i for i, e in enumerate(exemplars) if e.task == task]]
            for task in self.scored_tasks
        ]
        self.known_tasks = tuple(dict.fromkeys([*self.scored_tasks, *self.tasks, default_task]))

    def model_for(self, task: str) -> str:
        target = self.tasks.get(task)
        return target.model if target else self.default_model

    def rank_tasks(self, question: str, task_hints: Sequence[str] = ()) -> list[TaskScore]:
        """Every scored task with its probability, most likely first."""
        query = np.asarray(self._embed([question]), dtype=np.float32)[0]
        similarity = np.array(
            [np.sort(bank @ query)[-self.neighbours :].mean() for bank in self._task_vectors],
            dtype=np.float64,
        )
        similarity += self.hint_weight * self._keyword_hits(task_hints)
        logits = similarity / self.temperature
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities)
        return [TaskScore(self.scored_tasks[i], float(probabilities[i])) for i in order]

    def route(self, question: str, task_hints: Sequence[str] = ()) -> Route:
        named = self._named_task(task_hints)
        ranked = self.rank_tasks(question, task_hints)
        if named is not None:
            runner_up = next((s.task for s in ranked if s.task != named), None)
            return Route(
                named, self.model_for(named), 1.0, f"caller's task hint {named!r}", runner_up
            )
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        nudged = self._hinted_words(task_hints)
        hint_note = f"; hints {', '.join(nudged)}" if nudged else ""
        runner_up_note = f", next {second.task} {second.probability:.2f}" if second else ""
        if best.probability < self.min_confidence:
            return Route(
                self.default_task,
                self.default_model,
                round(best.probability, 4),
                f"low confidence: best guess {best.task} {best.probability:.2f} < "
                f"{self.min_confidence:.2f}, default route{hint_note}",
                best.task,
            )
        return Route(
            best.task,
            self.model_for(best.task),
            round(best.probability, 4),
            f"nearest to {best.task} exemplars{runner_up_note}{hint_note}",
            second.task if second else None,
        )

    def _named_task(self, task_hints: Sequence[str]) -> str | None:
        for hint in task_hints:
            if _task_name(hint) in self.known_tasks:
                return _task_name(hint)
        return None

    def _keyword_hits(self, task_hints: Sequence[str]) -> np.ndarray:
        words = [_task_name(h) for h in task_hints]
        return np.array(
            [
                sum(any(w.startswith(k.lower()) for k in self.tasks[task].keywords) for w in words)
                if task in self.tasks
                else 0
                for task in self.scored_tasks
            ],
            dtype=np.float64,
        )

    def _hinted_words(self, task_hints: Sequence[str]) -> list[str]:
        keywords = [k.lower() for t in self.tasks.values() for k in t.keywords]
        return [h for h in task_hints if any(_task_name(h).startswith(k) for k in keywords)]


def _require_known_models(
    tasks: Mapping[str, TaskTarget], default_model: str, known_models: Collection[str]
) -> None:
    known = ", ".join(known_models) or "none"
    if default_model not in known_models:
        raise RouterError(
            f"router.default_model {default_model!r} is not in generation.models ({known}): "
            f"name one of those, or add {default_model!r} under generation.models"
        )
    for task, target in tasks.items():
        if target.model not in known_models:
            raise RouterError(
                f"router.tasks.{task}.model {target.model!r} is not in generation.models "
                f"({known}): name one of those, or add {target.model!r} under generation.models"
            )


def router_from_settings(
    cfg: RouterSettings,
    embedder: DocumentEmbedder,
    known_models: Collection[str],
    cache_dir: Path | None = None,
) -> TaskRouter:
    """The router the composition root builds: settings' tasks over the exemplar bank."""
    return TaskRouter(
        # Questions and exemplars both embed as documents: question-to-question similarity is
        # symmetric, so a query instruction (bge's) belongs on neither side.
        embedder.embed_documents,
        load_exemplars(cfg.exemplars or EXEMPLARS_PATH),
        {task: TaskTarget(t.model, t.keywords) for task, t in cfg.tasks.items()},
        default_task=cfg.default_task,
        default_model=cfg.default_model,
        known_models=known_models,
        min_confidence=cfg.min_confidence,
        neighbours=cfg.neighbours,
        temperature=cfg.temperature,
        hint_weight=cfg.hint_weight,
        cache_dir=cache_dir,
        embedder_name=embedder.name,
    )
