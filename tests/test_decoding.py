"""The repeated-sentence cut (rag/decoding.py) on answers streamed in every split, and the
per-model decoding options as vLLM receives them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.decoding import RepeatedSentenceCut, without_repeated_sentences
from rag.generator import sampling_options
from rag.settings import Decoding, SettingsError, load_settings

LOOP = (
    "Employees may work remotely up to two days a week [1]. "
    "Employees may work remotely up to two days a week [1]. "
    "Employees may work remotely up to two"
)
FIRST = "Employees may work remotely up to two days a week [1]."


def streamed(text: str, step: int) -> tuple[str, bool]:
    """What the cut shows when `text` arrives in deltas of `step` characters."""
    cut = RepeatedSentenceCut()
    shown = ""
    for start in range(0, len(text), step):
        visible, repeats = cut.feed(text[start : start + step])
        shown += visible
        if repeats:
            return shown, True
    return shown + cut.finish(), False


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, 400])
def test_a_looping_answer_ends_after_its_first_sentence_in_any_split(step: int) -> None:
    shown, repeats = streamed(LOOP, step)
    assert repeats
    assert shown.strip() == FIRST


@pytest.mark.parametrize("step", [1, 4, 400])
def test_an_answer_without_repeats_streams_whole(step: int) -> None:
    text = (
        "Employees may work from home two days a week [1]. "
        "Employees may work from the office on Fridays [2].\n\n"
        "1. Yes.\n1. Yes.\nAsk your manager first."
    )
    assert streamed(text, step) == (text, False)


def test_text_is_held_only_while_it_could_be_a_repeat() -> None:
    cut = RepeatedSentenceCut()
    assert cut.feed(FIRST + " ") == (FIRST + " ", False)
    # The start of the same sentence again: held back, not shown yet.
    assert cut.feed("Employees may") == ("", False)
    # It turns out different: everything held is shown at once.
    assert cut.feed(" also ask") == ("Employees may also ask", False)


def test_a_repeat_cut_short_by_max_tokens_is_dropped() -> None:
    assert without_repeated_sentences(LOOP) == FIRST
    assert without_repeated_sentences(FIRST + " " + FIRST[:20]) == FIRST + " "


def test_decoding_options_reach_vllm_only_when_they_change_something() -> None:
    assert sampling_options(Decoding()) == {}
    assert sampling_options(
        Decoding(repetition_penalty=1.2, frequency_penalty=0.5, stop=("\n\n",))
    ) == {"repetition_penalty": 1.2, "frequency_penalty": 0.5, "stop": ["\n\n"]}


def test_decoding_is_set_per_model_in_a_profile(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "generation:\n  models:\n    small:\n      model: some/model\n"
        "      decoding: {repetition_penalty: 1.1, cut_repeated_sentence: true}\n"
        "    large:\n      model: other/model\n"
    )
    models = load_settings(str(profile)).generation.models
    assert models["small"].decoding.repetition_penalty == 1.1
    assert models["small"].decoding.cut_repeated_sentence
    assert models["large"].decoding == Decoding()
    profile.write_text(
        "generation:\n  models:\n    small:\n      model: some/model\n"
        "      decoding: {repetition_penalty: 0}\n"
    )
    with pytest.raises(SettingsError, match="repetition_penalty"):
        load_settings(str(profile))


def test_the_answers_suite_counts_repeated_sentences() -> None:
    from evals.answers import repeated_sentence_count
    from evals.scoring import sentences

    assert repeated_sentence_count(sentences(LOOP)) == 1
    assert repeated_sentence_count(sentences(FIRST + " Ask your manager first.")) == 0
