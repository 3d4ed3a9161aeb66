"""The answer cache on the real pipeline: exact and semantic hits, per-user scope, no PII
ever cached, and invalidation when ingestion changes the chunks an answer used."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ingest.run import build_ingest_parts, ingest_folder
from rag.cache import AnswerCache
from rag.compose import build_pipeline
from rag.pipeline import Conversation, Pipeline
from rag.schema import Answer, ChatMessage
from tests.conftest import local_settings

pytestmark = pytest.mark.slow

QUESTION = "What is the minimum password length?"


def cached(pipeline: Pipeline, threshold: float | None = 0.9) -> Pipeline:
    cache = AnswerCache(ttl_s=3600, max_entries=100, semantic_threshold=threshold)
    return Pipeline(pipeline.settings, replace(pipeline.stages, cache=cache))


def cache_stage(answer: Answer) -> str:
    stage = next(s for s in answer.stages if s.name == "cache")
    return f"{stage.status}: {stage.detail}"


async def test_a_repeated_question_is_answered_from_the_cache(pipeline: Pipeline) -> None:
    with_cache = cached(pipeline)
    first = await with_cache.ask(QUESTION, Conversation(user="ann"))
    again = await with_cache.ask("  what is the MINIMUM password length ", Conversation(user="ann"))
    assert cache_stage(first) == "ran: miss" and first.status == "answered"
    assert cache_stage(again).startswith("ran: hit: exact")
    assert again.text == first.text
    assert [c.chunk_id for c in again.citations] == [c.chunk_id for c in first.citations]
    assert "generate" not in {s.name for s in again.stages}
    # A hit carries a verdict from every guard a fresh answer has (the registry grew: secrets
    # and system_prompt_leak joined), the input guards' run on this asking.
    assert {v.guard for v in again.verdicts} == {v.guard for v in first.verdicts}
    assert {"pii", "injection", "llama_guard"} <= {v.guard for v in again.verdicts}


async def test_a_paraphrase_retrieving_the_same_chunks_is_a_semantic_hit(
    pipeline: Pipeline,
) -> None:
    paraphrase = "what is the minimum length of a password"
    embed = pipeline.stages.embedder.embed_query
    assert float(np.dot(embed(QUESTION), embed(paraphrase))) >= 0.95
    with_cache = cached(pipeline, threshold=0.95)
    first = await with_cache.ask(QUESTION, Conversation(user="ann"))
    again = await with_cache.ask(paraphrase, Conversation(user="ann"))
    assert [c.chunk_id for c in again.citations] == [c.chunk_id for c in first.citations]
    assert cache_stage(again).startswith("ran: hit: semantic")
    assert again.text == first.text
    unrelated = await with_cache.ask("Who approves travel expenses?", Conversation(user="ann"))
    assert cache_stage(unrelated) == "ran: miss"


async def test_the_default_cache_never_answers_the_opposite_question(pipeline: Pipeline) -> None:
    # "maximum" scores 0.95 against "minimum" with MiniLM and retrieves the same chunks:
    # semantic hits are off unless a profile turns them on.
    with_cache = cached(pipeline, threshold=pipeline.settings.cache.semantic_threshold)
    await with_cache.ask(QUESTION, Conversation(user="ann"))
    opposite = await with_cache.ask(
        "What is the maximum password length?", Conversation(user="ann")
    )
    assert cache_stage(opposite) == "ran: miss"


async def test_another_user_never_gets_an_entry(pipeline: Pipeline) -> None:
    with_cache = cached(pipeline)
    await with_cache.ask(QUESTION, Conversation(user="ann"))
    other = await with_cache.ask(QUESTION, Conversation(user="bob"))
    assert cache_stage(other) == "ran: miss"


async def test_questions_with_personal_data_are_never_cached(pipeline: Pipeline) -> None:
    with_cache = cached(pipeline)
    question = "I am Ada Lovelace. What is the minimum password length?"
    first = await with_cache.ask(question, Conversation(user="ann"))
    again = await with_cache.ask(question, Conversation(user="ann"))
    assert cache_stage(first).startswith("skipped: bypassed: the conversation holds personal")
    assert cache_stage(again).startswith("skipped:")
    assert len(with_cache.stages.cache or []) == 0


async def test_changing_a_document_invalidates_answers_that_used_it(
    pipeline: Pipeline, examples_copy: Path, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path / "data")
    parts = build_ingest_parts(settings)
    ingest_folder(examples_copy, parts)
    with_cache = cached(build_pipeline(settings))
    first = await with_cache.ask(QUESTION, Conversation(user="ann"))
    source = examples_copy / Path(first.citations[0].path).relative_to("handbook-copy")
    hit = await with_cache.ask(QUESTION, Conversation(user="ann"))
    assert cache_stage(hit).startswith("ran: hit: exact")

    source.write_text(source.read_text().replace("14", "16"))
    report = ingest_folder(examples_copy, build_ingest_parts(settings))
    assert report.updated == [first.citations[0].path]
    after = await with_cache.ask(QUESTION, Conversation(user="ann"))
    assert cache_stage(after) == "ran: miss"
    assert after.citations[0].chunk_id != first.citations[0].chunk_id


def earlier(*texts: str) -> list[ChatMessage]:
    roles = ("user", "assistant")
    return [ChatMessage(roles[i % 2], text) for i, text in enumerate(texts)]  # type: ignore[arg-type]


async def test_an_entry_expires_after_ttl_s(pipeline: Pipeline) -> None:
    ttl_s = 3.0
    cache = AnswerCache(ttl_s=ttl_s, max_entries=100, semantic_threshold=None)
    with_cache = Pipeline(pipeline.settings, replace(pipeline.stages, cache=cache))
    first = await with_cache.ask(QUESTION, Conversation(user="ann"))
    stored_at = time.monotonic()
    again = await with_cache.ask(QUESTION, Conversation(user="ann"))
    assert cache_stage(first) == "ran: miss" and cache_stage(again).startswith("ran: hit: exact")
    # Waiting on the clock the cache reads (TTLCache: time.monotonic), not a fixed sleep.
    while time.monotonic() < stored_at + ttl_s + 0.1:
        await asyncio.sleep(0.1)
    expired = await with_cache.ask(QUESTION, Conversation(user="ann"))
    assert cache_stage(expired) == "ran: miss" and "generate" in {s.name for s in expired.stages}


async def test_past_max_entries_the_oldest_entry_is_evicted(pipeline: Pipeline) -> None:
    cache = AnswerCache(ttl_s=3600, max_entries=2, semantic_threshold=None)
    with_cache = Pipeline(pipeline.settings, replace(pipeline.stages, cache=cache))
    questions = [QUESTION, "Who approves travel expenses?", "When is salary paid?"]
    for question in questions:
        answer = await with_cache.ask(question, Conversation(user="ann"))
        assert cache_stage(answer) == "ran: miss" and answer.status == "answered", answer.text
    assert len(cache) == 2
    newest = await with_cache.ask(questions[2], Conversation(user="ann"))
    assert cache_stage(newest).startswith("ran: hit: exact")
    oldest = await with_cache.ask(questions[0], Conversation(user="ann"))
    assert cache_stage(oldest) == "ran: miss"


async def test_the_same_question_after_different_earlier_turns_is_a_miss(
    pipeline: Pipeline,
) -> None:
    with_cache = cached(pipeline, threshold=None)
    before = earlier("We are talking about the staff handbook.", "Yes, the staff handbook.")
    other = earlier("We are talking about the lantern catalogue.", "Yes, the lantern catalogue.")
    first = await with_cache.ask(QUESTION, Conversation(user="ann", turns=list(before)))
    same = await with_cache.ask(QUESTION, Conversation(user="ann", turns=list(before)))
    different = await with_cache.ask(QUESTION, Conversation(user="ann", turns=list(other)))
    assert cache_stage(first) == "ran: miss"
    assert cache_stage(same).startswith("ran: hit: exact"), "the control: same turns, a hit"
    assert cache_stage(different) == "ran: miss", "another conversation so far, another answer"
