"""`guardrag eval --data` takes a folder of labelled sets or the retrieval set's own folder,
and refuses any other folder before loading a model, naming what it looked for where."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals.retrieval import find_retrieval_set, load_questions
from evals.suites import EvalData
from tests.conftest import ROOT

QUESTIONS = [
    {
        "id": "q1",
        "question": "How long does the lantern battery last?",
        "doc": "lantern.md",
        "answers": ["thirty six hours"],
    },
    {
        "id": "q2",
        "question": "How many days a week may staff work remotely?",
        "doc": "remote.md",
        "answers": ["three days"],
    },
]
DOCS = {
    "lantern.md": "# Lantern\n\nThe lantern battery lasts thirty six hours on the low setting.\n",
    "remote.md": "# Remote work\n\nStaff may work remotely up to three days a week.\n",
}


def _sets_folder(tmp: Path) -> Path:
    """A folder of labelled sets holding only a tiny retrieval set, as retrieval_qa/."""
    retrieval_qa = tmp / "sets" / "retrieval_qa"
    (retrieval_qa / "docs").mkdir(parents=True)
    for name, text in DOCS.items():
        (retrieval_qa / "docs" / name).write_text(text)
    rows = "".join(json.dumps(row) + "\n" for row in QUESTIONS)
    (retrieval_qa / "questions.jsonl").write_text(rows)
    return tmp / "sets"


def _eval(data: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "evals.cli", "--data", str(data), "--out", str(out), *args]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_the_sets_folder_and_the_retrieval_set_folder_resolve_to_the_same_set(
    tmp_path: Path,
) -> None:
    sets = _sets_folder(tmp_path)
    set_folder = sets / "retrieval_qa"
    assert EvalData(sets).retrieval_qa == EvalData(set_folder).retrieval_qa == set_folder
    assert find_retrieval_set(sets) == find_retrieval_set(set_folder) == set_folder
    assert [q.id for q in load_questions(EvalData(set_folder).retrieval_qa)] == ["q1", "q2"]
    # The run records the same files as read either way.
    assert EvalData(sets).files_used() == EvalData(set_folder).files_used()
    assert set_folder / "questions.jsonl" in EvalData(set_folder).files_used()


def test_a_folder_without_a_retrieval_set_is_refused_naming_what_was_looked_for(
    tmp_path: Path,
) -> None:
    wrong = tmp_path / "wrong"
    (wrong / "docs").mkdir(parents=True)  # half a set: documents, no questions
    done = _eval(wrong, tmp_path / "out", "--suite", "retrieval")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for looked_for in (
        f"{wrong / 'questions.jsonl'} (missing)",
        f"{wrong / 'docs'}/ (found)",
        f"{wrong / 'retrieval_qa' / 'questions.jsonl'} (missing)",
        f"{wrong / 'retrieval_qa' / 'docs'}/ (missing)",
    ):
        assert looked_for in done.stderr, done.stderr
    assert not (tmp_path / "out").exists(), "refused before running anything"


def test_only_the_suites_that_read_the_retrieval_set_require_it(tmp_path: Path) -> None:
    data = EvalData(tmp_path)
    data.check_for(["guards", "router"])
    for suite in ("retrieval", "answers", "latency"):
        with pytest.raises(ValueError, match=f"^{suite} cannot run without a retrieval set"):
            data.check_for(["guards", suite])


@pytest.mark.slow
def test_eval_runs_the_same_on_the_retrieval_set_folder_as_on_its_parent(
    tmp_path: Path,
) -> None:
    sets = _sets_folder(tmp_path)
    metrics = {}
    for name, data in (("parent", sets), ("set", sets / "retrieval_qa")):
        out = tmp_path / name
        done = _eval(data, out, "--suite", "retrieval", "--no-llamaindex")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        record = json.loads((out / "metrics.json").read_text())
        assert record["suites"]["retrieval"]["status"] == "ran"
        metrics[name] = {
            key: value for key, value in record["metrics"].items() if not key.endswith("_ms")
        }
    assert metrics["set"] == metrics["parent"]
    assert metrics["set"]["retrieval.hybrid.questions"] == len(QUESTIONS)
    assert metrics["set"]["retrieval.hybrid.hit@1"] == 1.0
