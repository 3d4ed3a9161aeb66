"""The streamed retraction, through the API and in the chat, triggered deterministically by real
parts: the answer comes from a real vLLM server whose tiny Llama is built (tests/tiny_models.py
`tiny_llama_saying`) so that greedy decoding repeats one sentence carrying a real-format AWS
access key, whatever it is asked. The real secrets guard (detect-secrets) checks the answer's
windows while it streams; the key is in the first window, so the answer is stopped and retracted
after text was shown. SmolLM2 could not be made to trip an output guard reliably; these
weights can only say the key, so the trigger is the model's own output, not a stub."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from rag.compose import build_pool
from rag.pipeline import Pipeline
from rag.settings import ApiSettings, ModelEndpoint
from tests.conftest import serve_api
from tests.tiny_models import tiny_llama_saying
from tests.vllm_servers import VLLMServer, start_vllm_servers

pytestmark = pytest.mark.slow

KEY = "retraction-key-0123"
# A real-format AWS access key id (AKIA + 16 of [0-9A-Z]) that is no one's key.
ACCESS_KEY = "AKIAZ3TQ8MV2LX5KP7RW"
SAID = f"Deploy with access key {ACCESS_KEY} today. "
# Far more than the first 240-character window needs, and more than a fast machine generates
# in the time the guard takes to flag it (a 64-token ceiling was reached before the flag in a
# CI run): an answer that ends before max_tokens was stopped by the guard, not by its length.
MAX_TOKENS = 2048
CONTEXT_TOKENS = 4096  # MAX_TOKENS + a one-passage prompt (it fit beside 64 in 2,048)
ONE_PASSAGE = 1  # keeps the prompt well inside the tiny model's context


@pytest.fixture(scope="module")
def key_saying_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    model = tiny_llama_saying(tmp_path_factory.mktemp("tiny-says-a-key"), SAID)
    (server,) = start_vllm_servers(
        model, "tiny", 1, tmp_path_factory.mktemp("vllm-logs"), max_model_len=CONTEXT_TOKENS
    )
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def leaking(pipeline: Pipeline, key_saying_server: VLLMServer) -> Pipeline:
    """The shared pipeline's stages, with its one model name served by the key-saying Llama."""
    models = {
        "smollm2": ModelEndpoint(model="tiny", backend="openai", urls=(key_saying_server.url,))
    }
    generation = pipeline.settings.generation.model_copy(
        update={"models": models, "max_tokens": MAX_TOKENS}
    )
    settings = pipeline.settings.model_copy(
        update={
            "generation": generation,
            "api": ApiSettings(keys=(KEY,), rate_limit="1000/minute"),  # type: ignore[arg-type]
        }
    )
    return Pipeline(settings, replace(pipeline.stages, pool=build_pool(settings)))


def test_the_model_built_to_say_a_key_says_it_and_the_secrets_guard_flags_it(
    key_saying_server: VLLMServer,
) -> None:
    """The premise, checked apart: the server's greedy answer to anything is the sentence,
    repeated, and the sentence alone is what the guard flags."""
    answers = []
    for question in ("Who approves expenses?", "Write a haiku about lanterns."):
        reply = httpx.post(
            f"{key_saying_server.url}/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 3,
                "temperature": 0,
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        answers.append(reply.json()["choices"][0]["message"]["content"])
    assert answers == [SAID * 3] * 2, answers


def data_events(lines: list[str]) -> list[dict[str, Any]]:
    payloads = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]", payloads[-3:]
    return [json.loads(payload) for payload in payloads[:-1]]


async def test_a_streamed_answer_the_secrets_guard_flags_is_retracted_and_refused(
    leaking: Pipeline,
) -> None:
    async for url in serve_api(leaking, leaking.settings):
        async with (
            httpx.AsyncClient(timeout=300) as http,
            http.stream(
                "POST",
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                json={
                    "model": "guardrag",
                    "stream": True,
                    "messages": [{"role": "user", "content": "How do I deploy the service?"}],
                    "guardrag": {"top_k": ONE_PASSAGE},
                },
            ) as response,
        ):
            assert response.status_code == 200, await response.aread()
            lines = [line async for line in response.aiter_lines()]
    events = data_events(lines)
    retracted_at = next(
        (i for i, e in enumerate(events) if e.get("guardrag", {}).get("retracted")), None
    )
    assert retracted_at is not None, events[-3:]
    before, retraction, after = (
        events[:retracted_at],
        events[retracted_at],
        events[retracted_at + 1 :],
    )
    shown = "".join(e["choices"][0]["delta"].get("content") or "" for e in before)
    # Mid-stream: the key had been shown before the guard's window flagged it ...
    assert ACCESS_KEY in shown, shown
    assert "AWS_ACCESS_KEY" in retraction["guardrag"]["reason"], retraction
    assert retraction["choices"][0]["delta"] == {"content": ""}
    # ... and the model was stopped, not left to finish its MAX_TOKENS.
    assert shown.count(ACCESS_KEY) < MAX_TOKENS, shown
    last = after[-1]
    assert last["choices"][0]["finish_reason"] == "content_filter", last
    extra = last["guardrag"]
    assert extra["status"] == "refused", extra
    generate = next(s for s in extra["stages"] if s["name"] == "generate")
    assert generate["status"] == "cancelled", generate
    blocking = [v for v in extra["verdicts"] if v["action"] == "block"]
    assert [v["guard"] for v in blocking] == ["secrets"], extra["verdicts"]
    # What replaces the answer is the refusal; none of the flagged text is kept in it.
    replacement = "".join(e["choices"][0]["delta"].get("content") or "" for e in after)
    assert replacement.strip() and "secrets" in replacement, replacement
    assert ACCESS_KEY not in json.dumps(after), after


async def test_the_chat_replaces_a_retracted_answer_and_stores_no_key(
    leaking: Pipeline, tmp_path: Path
) -> None:
    from ui.chat import AUTO_MODEL, RETRACTED, ChatHandlers
    from ui.documents import DocumentLibrary
    from ui.history import HistoryStore

    settings = leaking.settings.model_copy(update={"data_dir": tmp_path})
    history = HistoryStore(tmp_path / "history.sqlite")
    handlers = ChatHandlers(
        Pipeline(settings, leaking.stages), settings.chat, history, DocumentLibrary(settings)
    )
    shown: list[str] = []
    async for update in handlers.stream_answer(
        "How do I deploy the service?",
        None,
        AUTO_MODEL,
        ONE_PASSAGE,
        None,  # type: ignore[arg-type]
    ):
        shown.append(update[0][-1]["content"])
    history.close()
    # The key was on the page while the answer streamed, then the marker replaced it ...
    first_key = next(i for i, text in enumerate(shown) if ACCESS_KEY in text)
    marker = shown.index(RETRACTED)
    assert first_key < marker, shown
    # ... and the refusal is what stays: no key in the page's last state nor in the history.
    final = shown[-1]
    assert final.startswith("**refused:**") and "secrets" in final, final
    assert not [text for text in shown[marker:] if ACCESS_KEY in text], shown[marker:]
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        stored = " ".join(
            str(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"')
        )
    assert "refused" in stored or "secrets" in stored, "the turn was saved"
    assert ACCESS_KEY not in stored
