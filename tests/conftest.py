"""Shared fixtures: real models, a real embedded Qdrant, one vLLM engine for the whole run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ingest.run import build_ingest_parts, ingest_folder
from rag.compose import build_pipeline, shutdown_engines, start_engines
from rag.models import pull, resolve_model
from rag.pipeline import Pipeline
from rag.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# The development sets live beside the repository (never copied into it).
EVAL_DATA = ROOT.parent / "shared" / "eval-data"


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


@pytest.fixture
def examples_copy(tmp_path: Path) -> Path:
    target = tmp_path / "handbook-copy"
    shutil.copytree(EXAMPLES, target)
    return target
