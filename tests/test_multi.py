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
    merge,
    normalise_answer,
    quality_score,
    run_chain,
    weighted,
)
from rag.pipeline import AskOptions, Pipeline, QuestionError
from rag.schema import ChatMessage
from rag.settings import ModelEndpoint

# Step 2's instruction. "Rewrite your answer in capital letters." is screened as reply
# manipulation by the injection rules (a chain instruction is the caller's text, screened
# like the question) and the chain was refused before it ran.
REWRITE = "Say the same thing again in fewer words."


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
@pytest.mark.parametrize(("code", "other"), [("HERON-42", "KESTREL-7"), ("KESTREL-7", "HERON-42")])
async def test_the_ensemble_synthesis_answers_from_the_drafts(
    two_models: Pipeline, code: str, other: str
) -> None:
    # The question does not hold the code name: only the drafts the synthesis call is given
    # can put it in the merged answer (and the other name, never given, stays out).
    drafts = [
        ModelAnswer("smollm2", f"The project code name is {code}.", 0.9),
        ModelAnswer("smollm2-b", f"The code name of the project is {code}.", 0.8),
    ]
    merged = await merge(
        MergeStrategy.ENSEMBLE,
        drafts,
        two_models.stages.pool,
        "What is the project code name?",
        "smollm2",
        32,
    )
    assert code in merged.text and other not in merged.text, merged.text
    assert merged.strategy == MergeStrategy.ENSEMBLE and merged.answers == tuple(drafts)


@pytest.mark.slow
async def test_a_chain_passes_each_step_the_previous_output(two_models: Pipeline) -> None:
    answer = await two_models.ask(
        "What is the minimum password length?",
        options=AskOptions(
            chain=(
                ChainStep("smollm2", "Answer in one sentence."),
                ChainStep("smollm2-b", REWRITE),
            )
        ),
    )
    generate = next(s for s in answer.stages if s.name == "generate")
    assert answer.status == "answered" and answer.text
    assert "chain: smollm2 → smollm2-b" in generate.detail
    # That step 2 saw step 1's output is shown at the pool, where both prompts can be asked
    # directly (next test): through the whole pipeline, step 2 alone can give the chain's
    # answer word for word (both say "…is 14 characters." once the repeats are cut).


@pytest.mark.slow
async def test_a_chain_step_is_given_the_previous_steps_output_before_its_instruction(
    two_models: Pipeline,
) -> None:
    pool = two_models.stages.pool
    question = [ChatMessage("user", "Name a colour of the rainbow.")]
    instruction = "Repeat your previous answer, word for word."
    steps = (
        ChainStep("smollm2", "Answer in one short sentence."),
        ChainStep("smollm2-b", instruction),
    )
    first, second = await run_chain(pool, steps, question, 24, 0.0)
    assert (first.model, second.model) == ("smollm2", "smollm2-b")
    # Step 2 asked directly, with and without step 1's output before its instruction: the
    # chain's step 2 answered what it would answer having seen it, which is not what it
    # answers blind.
    after_first = [
        *question,
        ChatMessage("assistant", first.text),
        ChatMessage("user", instruction),
    ]
    seen, _ = await pool.answer("smollm2-b", after_first, 24, 0.0)
    blind, _ = await pool.answer(
        "smollm2-b", [*question, ChatMessage("user", instruction)], 24, 0.0
    )
    assert seen.text != blind.text, "the comparison must be able to tell the two apart"
    assert second.text == seen.text, (second.text, seen.text, blind.text)


@pytest.mark.slow
async def test_an_unknown_fan_out_model_is_refused(two_models: Pipeline) -> None:
    with pytest.raises(QuestionError, match="unknown model 'gpt-9'"):
        await two_models.ask("hello there", options=AskOptions(fan_out=("smollm2", "gpt-9")))
