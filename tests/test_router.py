"""The task router on the real MiniLM embedder, built from the local profile exactly as the
composition root builds it (rag.router.router_from_settings)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from evals.router import evaluate_router, load_router_rows
from rag.compose import build_embedder
from rag.embedder import SentenceEmbedder
from rag.router import (
    EXEMPLARS_PATH,
    TaskRouter,
    TaskTarget,
    load_exemplars,
    router_from_settings,
)
from rag.settings import Settings, load_settings

TASKS = (
    "document_qa",
    "general_reasoning",
    "multilingual",
    "structured_parsing",
    "code",
    "adversarial_reasoning",
    "classification",
)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings("local", data_dir=tmp_path_factory.mktemp("router-data"))


@pytest.fixture(scope="module")
def embedder(settings: Settings) -> SentenceEmbedder:
    return build_embedder(settings)


@pytest.fixture(scope="module")
def router(settings: Settings, embedder: SentenceEmbedder) -> TaskRouter:
    return router_from_settings(
        settings.router, embedder, settings.generation.models, settings.data_dir / "cache"
    )


# Written for this test: in neither the exemplar bank nor the labelled set.
CLEAR_CASES = [
    ("How many sick days can I take without a doctor's note?", "document_qa"),
    ("What are the trade-offs of hiring two juniors instead of one senior?", "general_reasoning"),
    ("Comment demander un jour de télétravail supplémentaire ?", "multilingual"),
    ("Extract the vendor, date and total from this receipt as JSON.", "structured_parsing"),
    ("Write a SQL query listing overdue invoices by customer.", "code"),
    ("What could an attacker do with a stolen employee badge?", "adversarial_reasoning"),
    (
        "Is this customer comment positive or negative: 'the lamp broke on day two'?",
        "classification",
    ),
]


@pytest.mark.parametrize(("question", "task"), CLEAR_CASES)
def test_a_clear_question_routes_to_its_task(router: TaskRouter, question: str, task: str) -> None:
    route = router.route(question)
    assert route.task == task, route
    assert route.model == "smollm2"
    assert route.confidence >= router.min_confidence
    assert route.runner_up not in (None, task)
    assert task in route.reason


def test_a_hint_naming_a_task_picks_it_over_the_question(router: TaskRouter) -> None:
    question = "How many sick days can I take without a doctor's note?"
    route = router.route(question, ["Adversarial-Reasoning"])
    assert (route.task, route.confidence) == ("adversarial_reasoning", 1.0)
    assert "hint" in route.reason
    # The runner-up is still what the question itself looks like.
    assert route.runner_up == "document_qa"


def test_keyword_hints_lean_an_open_question_towards_their_task(router: TaskRouter) -> None:
    question = "Look at these log entries from last night."

    def adversarial(hints: Sequence[str]) -> float:
        ranked = router.rank_tasks(question, hints)
        return next(s.probability for s in ranked if s.task == "adversarial_reasoning")

    assert router.route(question).task != "adversarial_reasoning"
    hinted = router.route(question, ["threat", "adversary"])
    assert hinted.task == "adversarial_reasoning"
    assert "threat" in hinted.reason
    assert adversarial(["threat", "adversary"]) > adversarial(["threat"]) > adversarial([])
    # Words that match no task's keywords change nothing.
    assert router.rank_tasks(question, ["lantern"]) == router.rank_tasks(question)


def test_below_the_confidence_threshold_the_default_route_is_taken(
    settings: Settings, embedder: SentenceEmbedder
) -> None:
    question = "Go through these log entries from last night and tell me what you see."
    cfg = settings.router
    best = router_from_settings(cfg, embedder, ["smollm2"]).rank_tasks(question)[0]
    assert best.task != cfg.default_task

    unsure = router_from_settings(
        cfg.model_copy(update={"min_confidence": best.probability + 1e-3}), embedder, ["smollm2"]
    ).route(question)
    assert (unsure.task, unsure.model) == (cfg.default_task, cfg.default_model)
    assert unsure.runner_up == best.task
    assert unsure.reason.startswith("low confidence")

    sure = router_from_settings(
        cfg.model_copy(update={"min_confidence": best.probability - 1e-3}), embedder, ["smollm2"]
    ).route(question)
    assert sure.task == best.task


def test_tasks_without_a_mapping_are_classified_but_answered_by_the_default_model(
    settings: Settings, embedder: SentenceEmbedder
) -> None:
    cfg = settings.router.model_copy(
        update={"tasks": {}, "default_model": "general", "min_confidence": 0.0}
    )
    router = router_from_settings(cfg, embedder, ["general", "code"])
    route = router.route("Write a SQL query listing overdue invoices by customer.")
    assert (route.task, route.model) == ("code", "general")


def test_cluster_profile_sends_code_to_the_coder_and_the_rest_to_the_general_model(
    embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    cluster = load_settings("cluster", data_dir=tmp_path)
    # The cluster's own embedder (bge) is not shipped offline; MiniLM proves the mapping.
    router = router_from_settings(cluster.router, embedder, cluster.generation.models)
    route = router.route("Write a SQL query listing overdue invoices by customer.")
    assert (route.task, route.model) == ("code", "code")
    assert router.route("How many sick days can I take?").model == "general"


@pytest.mark.parametrize(
    ("router_overrides", "message"),
    [
        (
            {"tasks": {"code": {"model": "qwen-coder"}}},
            r"router\.tasks\.code\.model 'qwen-coder' is not in generation\.models "
            r"\(smollm2\).*add 'qwen-coder' under generation\.models",
        ),
        ({"default_model": "llama"}, r"router\.default_model 'llama' is not in generation\.models"),
    ],
)
def test_a_model_missing_from_generation_models_is_refused_by_name(
    embedder: SentenceEmbedder, tmp_path: Path, router_overrides: dict[str, object], message: str
) -> None:
    settings = load_settings("local", data_dir=tmp_path, router=router_overrides)
    with pytest.raises(ValueError, match=message):
        router_from_settings(settings.router, embedder, settings.generation.models)


def test_the_exemplar_bank_is_embedded_once_per_embedder(
    embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    batches: list[int] = []

    def counting_embed(texts: Sequence[str]) -> np.ndarray:
        batches.append(len(texts))
        return embedder.embed_documents(texts)

    bank = load_exemplars()
    # Two per task keep the test quick.
    exemplars = [e for task in TASKS for e in [x for x in bank if x.task == task][:2]]
    # A name of its own, so vectors embedded by other tests are not reused.
    name = f"minilm-{uuid.uuid4().hex}"
    targets = {"code": TaskTarget("smollm2")}
    first, second = (
        TaskRouter(
            counting_embed,
            exemplars,
            targets,
            "document_qa",
            "smollm2",
            ["smollm2"],
            cache_dir=tmp_path,
            embedder_name=name,
        )
        for _ in range(2)
    )
    assert batches == [len(exemplars)]
    assert first.scored_tasks == second.scored_tasks
    assert len(list(tmp_path.glob("router-exemplars-*.npy"))) == 1
    second.route("Write a SQL query listing overdue invoices by customer.")
    assert batches == [len(exemplars), 1]


def test_an_unreadable_exemplar_file_is_named_with_the_expected_shape(tmp_path: Path) -> None:
    broken = tmp_path / "mine.jsonl"
    broken.write_text('{"task": "code", "txt": "typo in the key"}\n')
    with pytest.raises(ValueError, match=r"mine\.jsonl.*\{\"task\": \"code\", \"text\""):
        load_exemplars(broken)


def test_labelled_set_is_balanced_split_and_apart_from_the_exemplars() -> None:
    rows = load_router_rows()
    per_task = Counter(r.task for r in rows)
    assert set(per_task) == set(TASKS) and min(per_task.values()) >= 25
    assert {r.split for r in rows} == {"dev", "test"}
    assert len({r.id for r in rows}) == len(rows)
    bank = {e.text.casefold() for e in load_exemplars(EXEMPLARS_PATH)}
    assert not [r.id for r in rows if r.text.casefold() in bank]
    assert {e.task for e in load_exemplars()} == set(TASKS)


def test_evaluation_report_adds_up(router: TaskRouter) -> None:
    rows = [r for r in load_router_rows(split="dev") if r.id.endswith("-01")]
    report = evaluate_router(router, rows)
    assert report.total == len(rows) == sum(map(sum, report.confusion))
    diagonal = sum(report.confusion[i][i] for i in range(len(report.labels)))
    assert report.correct == diagonal == sum(t.correct for t in report.per_task)
    assert len(report.misses) == report.total - report.correct
    assert 0 < report.ms_p50 <= report.ms_p95
    assert json.dumps([m.__dict__ for m in report.misses])
