"""Several models on one question: merge strategies on answers, then fan-out, ensemble and
chaining through the real pipeline (two model names served by the same SmolLM2 engine)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rag.compose import build_pool
from rag.multi import (
    ChainStep,
    MergeStrategy,
    ModelAnswer,
    best_quality,
    concatenate,
    consensus,
    normalise_answer,
    quality_score,
    weighted,
)
from rag.pipeline import AskOptions, Pipeline, QuestionError
from rag.settings import ModelEndpoint


def answers(*pairs: tuple[str, float]) -> list[ModelAnswer]:
    return [ModelAnswer(f"m{i}", text, conf) for i, (text, conf) in enumerate(pairs)]


def test_consensus_takes_the_majority_of_normalised_answers() -> None:
    merged = consensus(answers(("Spam.", 0.5), ("spam", 0.6), ("Not spam", 0.99)))
    assert normalise_answer(merged.text) == "spam"
    assert merged.agreement == pytest.approx(2 / 3)


def test_a_consensus_tie_goes_to_the_surer_models() -> None:
    merged = consensus(answers(("yes", 0.4), ("no", 0.9)))
    assert merged.text == "no" and merged.agreement == 0.5


def test_weighted_sums_confidence_per_answer() -> None:
    # Two unsure votes for "low" outweigh one sure vote for "high".
    merged = weighted(answers(("low", 0.5), ("Low.", 0.45), ("high", 0.9)))
    assert normalise_answer(merged.text) == "low"
    assert merged.agreement == pytest.approx(0.95 / 1.85)


def test_concatenate_keeps_every_answer_labelled() -> None:
    merged = concatenate(answers(("first", 1.0), ("second", 1.0)))
    assert merged.text == "**m0**: first\n\n**m1**: second"


def test_best_quality_prefers_a_complete_cited_answer() -> None:
    rambling = "the the the the the the"
    cited = "Staff may work remotely up to three days a week [1]."
    assert quality_score(cited) > quality_score(rambling) > quality_score("")
    assert best_quality(answers((rambling, 0.99), (cited, 0.5))).text == cited


@pytest.fixture(scope="module")
def two_models(pipeline: Pipeline) -> Pipeline:
    endpoint = pipeline.settings.generation.models["smollm2"]
    models = {"smollm2": endpoint, "smollm2-b": ModelEndpoint(**endpoint.model_dump())}
    generation = pipeline.settings.generation.model_copy(update={"models": models})
    settings = pipeline.settings.model_copy(update={"generation": generation})
    return Pipeline(settings, replace(pipeline.stages, pool=build_pool(settings)))


@pytest.mark.slow
async def test_fan_out_asks_both_models_and_reports_their_agreement(two_models: Pipeline) -> None:
    answer = await two_models.ask(
        "How many days a week may staff work remotely?",
        options=AskOptions(fan_out=("smollm2", "smollm2-b"), merge=MergeStrategy.CONSENSUS),
    )
    generate = next(s for s in answer.stages if s.name == "generate")
    assert answer.status == "answered" and answer.text
    # Greedy decoding on the same weights: the two answers are the same vote.
    assert "fan-out to smollm2, smollm2-b; consensus: 2 of 2 models agree" in generate.detail
    assert {v.guard for v in answer.verdicts} >= {"llama_guard"}


@pytest.mark.slow
async def test_ensemble_synthesises_one_answer_with_another_call(two_models: Pipeline) -> None:
    answer = await two_models.ask(
        "What is the minimum password length?",
        options=AskOptions(fan_out=("smollm2", "smollm2-b"), merge=MergeStrategy.ENSEMBLE),
    )
    generate = next(s for s in answer.stages if s.name == "generate")
    assert answer.status == "answered" and answer.text
    assert "ensemble: synthesised by smollm2" in generate.detail


@pytest.mark.slow
async def test_a_chain_passes_each_step_the_previous_output(two_models: Pipeline) -> None:
    answer = await two_models.ask(
        "What is the minimum password length?",
        options=AskOptions(
            chain=(
                ChainStep("smollm2", "Answer in one sentence."),
                ChainStep("smollm2-b", "Rewrite your answer in capital letters."),
            )
        ),
    )
    generate = next(s for s in answer.stages if s.name == "generate")
    assert answer.status == "answered" and answer.text
    assert "chain: smollm2 → smollm2-b" in generate.detail


@pytest.mark.slow
async def test_an_unknown_fan_out_model_is_refused(two_models: Pipeline) -> None:
    with pytest.raises(QuestionError, match="unknown model 'gpt-9'"):
        await two_models.ask("hello there", options=AskOptions(fan_out=("smollm2", "gpt-9")))
