"""Llama Guard's serving path on real vLLM (CPU) with a tiny random Llama built here: the
engine loads the model from a local path, answers the guard's prompt, and noise comes back
as `unavailable`, never `allow`."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrails.verdict import GuardContext
from rag.compose import build_output_guard
from rag.settings import Settings
from tests.tiny_models import tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama-guard"))


async def test_a_guard_model_on_disk_is_served_and_noise_is_unavailable(
    provisioned: Settings, tiny_guard_dir: Path
) -> None:
    guards = provisioned.guards
    settings = provisioned.model_copy(
        update={
            "guards": guards.model_copy(
                update={"output": guards.output.model_copy(update={"model": str(tiny_guard_dir)})}
            )
        }
    )
    guard = build_output_guard(settings)
    assert guard.available
    verdict = await guard.check(
        "You can work remotely 3 days a week.",
        GuardContext(checked_as="answer", question="How many remote days?"),
    )
    assert verdict.outcome == "unavailable"
    assert "unknown format" in verdict.reason
