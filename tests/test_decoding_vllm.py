"""Per-model decoding through the real pool and in-process vLLM (SmolLM2): the repeated-
sentence cut ends a looping answer, and a model's own token cap holds. Two pool names share
one engine (the same model folder), so one answer is the other's control."""

from __future__ import annotations

import re

import pytest

from rag.compose import build_pool
from rag.generator import TokenUsage
from rag.schema import ChatMessage
from rag.settings import Decoding, ModelEndpoint, Settings

pytestmark = pytest.mark.slow

SENTENCE = "The meeting is on Monday at noon."
# SmolLM2 asked to write a sentence five times writes it once; asked to continue a text that
# repeats it, it loops, as it does on a handbook answer.
ASK_TO_REPEAT = [ChatMessage("user", f"{SENTENCE} {SENTENCE} {SENTENCE} Continue this text.")]


def with_models(settings: Settings, decodings: dict[str, Decoding]) -> Settings:
    smollm2 = settings.generation.models["smollm2"]
    models = {
        name: smollm2.model_copy(update={"decoding": decoding})
        for name, decoding in decodings.items()
    }
    generation = settings.generation.model_copy(update={"models": models})
    return settings.model_copy(update={"generation": generation})


def times_written(text: str) -> int:
    return len(re.findall(re.escape(SENTENCE[:-1]), text, re.IGNORECASE))


async def test_the_cut_ends_a_looping_answer_at_its_first_repeat(provisioned: Settings) -> None:
    pool = build_pool(
        with_models(
            provisioned,
            {"plain": Decoding(), "cut": Decoding(cut_repeated_sentence=True)},
        )
    )
    plain = "".join([d async for d in pool.stream("plain", ASK_TO_REPEAT, 80, 0.0)])
    cut = "".join([d async for d in pool.stream("cut", ASK_TO_REPEAT, 80, 0.0)])
    # The same greedy generation: the control writes the sentence again, the cut does not.
    assert times_written(plain) >= 2, plain
    assert times_written(cut) == 1, cut
    assert plain.startswith(cut.strip())
    whole, _ = await pool.answer("cut", ASK_TO_REPEAT, 80, 0.0)
    assert whole.text.strip() == cut.strip()


async def test_a_models_own_token_cap_holds_below_the_requested_one(
    provisioned: Settings,
) -> None:
    pool = build_pool(with_models(provisioned, {"short": Decoding(max_tokens=6)}))
    usage = TokenUsage()
    text = "".join([d async for d in pool.stream("short", ASK_TO_REPEAT, 80, 0.0, usage=usage)])
    assert text
    assert 1 <= usage.completion_tokens <= 6


def test_every_model_of_the_shipped_profiles_parses_its_decoding() -> None:
    from rag.settings import load_settings

    local = load_settings("local").generation.models
    assert local["smollm2"].decoding.cut_repeated_sentence
    # A large model on a GPU needs none of it: the cluster's models decode as they are.
    cluster = load_settings("cluster").generation.models
    assert all(m.decoding == Decoding() for m in cluster.values())
    assert isinstance(cluster, dict) and all(isinstance(m, ModelEndpoint) for m in cluster.values())
