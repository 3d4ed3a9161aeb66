"""Evaluations take the guards from the lists the pipeline runs (issue 16): a guard registered
in rag/compose.py GUARDS is measured by the guards suite and timed by the guard benchmark
without an edit to evals/, and a guard the profile turns off is reported, not measured."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from evals.bench_guards import input_guard_timings
from evals.progress import RunProgress
from evals.suites import EvalData, SharedWork, SuiteResult, guards_suite
from guardrails.registry import GuardEntry
from guardrails.verdict import GuardContext, Verdict, clean, flagged
from rag.compose import GUARDS, build_guards
from rag.settings import Settings
from tests.conftest import local_settings

# Written here for the test (nothing of ../shared/eval-data is copied): one row shouts.
BENIGN_ROWS = (
    "How many days of annual leave do I get?",
    "Who approves an expense report?",
    "The office is closed on Friday!!! Where do I collect my badge?",
    "When is salary paid?",
)


class ExclamationGuard:
    """Flags text holding three exclamation marks or more: a real guard, small enough to be
    registered by a test the way rag/compose.py registers the shipped ones."""

    name = "exclamations"

    async def check(self, text: str, context: GuardContext) -> Verdict:
        if text.count("!") >= 3:
            return flagged(self.name, 1.0, ("shouting",), "three or more exclamation marks")
        return clean(self.name)


def shouts(text: str) -> bool:
    return text.count("!") >= 3


@pytest.fixture
def exclamations_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # One registration line, as the design promises; monkeypatch removes it afterwards.
    monkeypatch.setitem(
        GUARDS, "exclamations", GuardEntry(lambda _: ExclamationGuard(), ("question", "chunk"))
    )


def guards_suite_on(settings: Settings, sets: Path, limit: int) -> tuple[SuiteResult, SharedWork]:
    """The guards suite on a folder holding only a benign set (no retrieval set)."""
    sets.mkdir(exist_ok=True)
    rows = [
        {"id": str(i), "text": text, "label": "benign", "kind": "question"}
        for i, text in enumerate(BENIGN_ROWS)
    ]
    (sets / "benign.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    progress = RunProgress(Console(file=io.StringIO()))
    work = SharedWork(settings, EvalData(sets), progress, limit, 1, False)
    return guards_suite(work), work


def test_a_guard_registered_in_the_composition_root_is_measured_by_the_guards_suite(
    provisioned: Settings, tmp_path: Path, exclamations_registered: None
) -> None:
    settings = local_settings(tmp_path / "data")
    result, work = guards_suite_on(settings, tmp_path / "sets", limit=8)
    metrics = result.metrics
    # The benign questions: one of four shouts.
    assert metrics["guards.exclamations.question.fpr"] == 0.25
    assert metrics["guards.exclamations.question.rows"] == len(BENIGN_ROWS)
    # The document chunks ingest would store, checked as chunks: the guard's own count.
    chunks = [row["text"] for row in work.document_chunks.rows]
    assert len(chunks) == 8
    assert metrics["guards.exclamations.chunk.fpr"] == round(
        sum(map(shouts, chunks)) / len(chunks), 4
    )
    # Registered for questions and chunks only: never run on answers.
    assert not any(k.startswith("guards.exclamations.answer") for k in metrics)
    # The shipped guards without a labelled set are measured the same way, on every kind
    # of text their registration names.
    for key in ("secrets.question", "secrets.chunk", "secrets.answer", "system_prompt_leak.answer"):
        assert f"guards.{key}.fpr" in metrics, sorted(metrics)
    # No labelled PII or injection set in this folder: those parts say so.
    assert "guards.pii" in result.unavailable and "guards.injection" in result.unavailable


def test_a_guard_the_profile_turns_off_is_reported_and_not_measured(
    provisioned: Settings, tmp_path: Path, exclamations_registered: None
) -> None:
    settings = local_settings(tmp_path / "data", guards={"off": ["exclamations", "secrets"]})
    result, _ = guards_suite_on(settings, tmp_path / "sets", limit=4)
    for name in ("exclamations", "secrets"):
        assert "off in this profile" in result.unavailable[f"guards.{name}"]
        assert not any(k.startswith(f"guards.{name}.") for k in result.metrics)
    assert "guards.system_prompt_leak.answer.fpr" in result.metrics


def test_the_guard_benchmark_times_every_input_guard_the_pipeline_lists(
    provisioned: Settings, tmp_path: Path, exclamations_registered: None
) -> None:
    guards = build_guards(local_settings(tmp_path), "question")
    timings = input_guard_timings(guards, list(BENIGN_ROWS))
    names = [label.split(" ")[0] for label in timings]
    assert names == [g.name for g in guards]
    assert "exclamations (ExclamationGuard)" in timings
    assert all(len(times) == len(BENIGN_ROWS) and min(times) >= 0 for times in timings.values())
