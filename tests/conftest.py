"""Shared fixtures: real models, a real embedded Qdrant, one vLLM engine for the whole run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ingest.run import build_ingest_parts, ingest_folder
from rag.compose import build_pipeline, shutdown_engines, start_engines
from rag.models import pull, resolve_model
from rag.pipeline import Pipeline
from rag.settings import Settings, load_settings

# Threads fixed by the tests, not by the machine, so a run behaves alike on 2 cores or 64 and
# the processes of one run do not oversubscribe 2 cores: torch here and in every process the
# tests start (guardrag commands, evals, vLLM front ends) computes on one thread (torch reads
# OMP_NUM_THREADS when first imported, which is after this), and every vLLM engine is pinned
# to the last core, the one vLLM's own automatic binding picks on a 2-core machine.
TEST_THREADS = "1"
os.environ.setdefault("OMP_NUM_THREADS", TEST_THREADS)
os.environ.setdefault("MKL_NUM_THREADS", TEST_THREADS)
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str((os.cpu_count() or 1) - 1))

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# The development sets live beside the repository (never copied into it).
EVAL_DATA = ROOT.parent / "shared" / "eval-data"


# In CI a test that cannot run is a failure: a skip there (eval data, kubectl or Chromium
# missing) would let the run go green without the gate it skipped. Locally a skip stays a skip,
# listed by `-rs` (pyproject.toml) in every run.
SKIPS_FAIL = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if SKIPS_FAIL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI={os.environ['CI']}), which must run it: {reason}"


def without_injection_head(pipeline: Pipeline) -> Pipeline:
    """The same pipeline (engines, store, pool) with its input guards built without the
    injection guard's trained head: for tests of what the rules and the whole-conversation
    check decide. A retrained head may flag one half of a split request on its own (then the
    request is blocked anyway), which must not decide whether the whole-conversation check
    works."""
    from rag.compose import build_guards

    guards_cfg = pipeline.settings.guards
    injection = guards_cfg.injection.model_copy(update={"head": False})
    settings = pipeline.settings.model_copy(
        update={"guards": guards_cfg.model_copy(update={"injection": injection})}
    )
    return Pipeline(
        settings, replace(pipeline.stages, input_guards=build_guards(settings, "question"))
    )


# Questions the example handbook answers, for tests that search a store of its chunks.
HANDBOOK_QUESTIONS = (
    "How many days of annual leave do I get?",
    "What is the minimum password length?",
    "Who approves an expense above 2,500 euros?",
    "When is salary paid?",
    "How many days a week can I work remotely?",
)


def example_chunk_texts(tokenizer: Any) -> list[str]:
    """The shipped examples' Markdown cut as ingest cuts it (200 tokens, 30 overlapping)."""
    from ingest.chunking import chunk_document
    from ingest.readers import read_document

    return [
        piece.text
        for file in sorted(EXAMPLES.rglob("*.md"))
        for piece in chunk_document(read_document(file).text, tokenizer, 200, 30, markdown=True)
    ]


def eval_rows(name: str) -> list[dict[str, object]]:
    path = EVAL_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not beside this checkout (CI has it as ../shared/eval-data)")
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def local_settings(data_dir: Path, **overrides: object) -> Settings:
    return load_settings("local", data_dir=data_dir, **overrides)


@pytest.fixture(scope="session")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The local profile with its models provisioned (as `make test` does before pytest)."""
    settings = local_settings(tmp_path_factory.mktemp("unused"))
    if resolve_model(settings.generation.models["smollm2"].model, settings.models_dir) is None:
        pull(settings)
    return settings


@pytest.fixture(scope="session")
def corpus_settings(provisioned: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose data directory holds examples/ ingested once for the session."""
    data_dir = tmp_path_factory.mktemp("corpus-data")
    settings = local_settings(data_dir)
    parts = build_ingest_parts(settings)
    report = ingest_folder(EXAMPLES, parts)
    parts.store.close()
    assert not report.failed, report.failed
    return settings


@pytest.fixture(scope="session")
def pipeline(corpus_settings: Settings) -> Iterator[Pipeline]:
    built = build_pipeline(corpus_settings)
    # Tests assert fresh generations, so the shared pipeline has no answer cache (a second
    # test asking a question another asked would get the first answer back). The cache has
    # its own tests, with their own pipelines.
    built = Pipeline(built.settings, replace(built.stages, cache=None))
    # Started outside the event loop: vLLM binds its output handler to the loop of the first
    # request, which is pytest-asyncio's session loop for every async test.
    start_engines(built)
    yield built
    # Stop vLLM's processes while pytest's output streams are still open.
    shutdown_engines()


async def serve_api(
    pipeline: Pipeline, settings: Settings, start_deadline_s: float = 60.0, port: int | None = None
) -> AsyncIterator[str]:
    """The API on a free loopback port, in this event loop (the one vLLM's engine is bound
    to); yields its URL. A server that cannot start (its port taken, an app that fails at
    startup) fails the test at once with uvicorn's reason, not a wait forever for `started`."""
    import uvicorn

    from rag.compose import prometheus_metrics
    from tests.vllm_servers import free_port
    from ui.api import build_api

    app = build_api(Pipeline(settings, pipeline.stages), settings, prometheus_metrics())
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))

    async def serve_until_stopped() -> None:
        try:
            await server.serve()
        except SystemExit as exc:
            # uvicorn exits when it cannot bind; out of a task that would end the whole run.
            raise RuntimeError(
                f"uvicorn exited with status {exc.code} (its log says why)"
            ) from None

    task = asyncio.create_task(serve_until_stopped())
    deadline = time.monotonic() + start_deadline_s
    while not server.started:
        if task.done():
            failure = task.exception() if not task.cancelled() else None
            pytest.fail(f"the API did not start on port {port}: {failure}")
        if time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail(f"the API did not start on port {port} within {start_deadline_s:.0f} s")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def examples_copy(tmp_path: Path) -> Path:
    target = tmp_path / "handbook-copy"
    shutil.copytree(EXAMPLES, target)
    return target
