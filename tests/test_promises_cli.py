"""What the README promises of the `guardrag` command, run as a user runs it (a process of its
own): `hash-password`, `route`, `models list`, `ingest --no-prune`, `ingest.max_file_bytes`,
and the embedded store's error when another process holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rag.compose import build_store
from rag.settings import Settings, load_settings
from tests.conftest import ROOT
from ui.auth import verify_password


def guardrag(
    args: list[str], data_dir: Path, stdin: str = "", **environment: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GUARDRAG_DATA_DIR": str(data_dir), "COLUMNS": "250", **environment}
    return subprocess.run(
        [sys.executable, "-m", "ui.cli", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ingest_report(folder: Path, data_dir: Path, *flags: str, **environment: str) -> dict:  # type: ignore[type-arg]
    report = data_dir.parent / "report.json"
    done = guardrag(
        ["ingest", str(folder), "--report", str(report), *flags], data_dir, **environment
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(report.read_text())  # type: ignore[no-any-return]


def write_docs(folder: Path, **texts: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / f"{name}.md").write_text(text)


# ---------------------------------------------------------------- hash-password


def test_hash_password_prints_a_scrypt_hash_that_verifies_only_that_password(
    tmp_path: Path,
) -> None:
    done = guardrag(["hash-password"], tmp_path, stdin="correct horse 7\ncorrect horse 7\n")
    assert done.returncode == 0, done.stderr
    # The prompts (no newline after them: input is hidden) come before the hash.
    stored = done.stdout.split("confirmation:")[-1].strip()
    assert stored.startswith("scrypt$") and "correct horse" not in done.stdout
    assert verify_password("correct horse 7", stored)
    assert not verify_password("correct horse 8", stored)
    # A fresh salt each time: the same password never hashes alike.
    again = guardrag(["hash-password"], tmp_path, stdin="correct horse 7\ncorrect horse 7\n")
    assert again.stdout.split("confirmation:")[-1].strip() != stored


def test_hash_password_refuses_a_confirmation_that_differs(tmp_path: Path) -> None:
    done = guardrag(["hash-password"], tmp_path, stdin="first-pw\nsecond-pw\n")
    assert "scrypt$" not in done.stdout
    assert done.returncode != 0 or "do not match" in done.stdout + done.stderr


# ---------------------------------------------------------------- route


def test_route_names_task_model_and_confidence_and_a_task_hint_picks_the_task(
    provisioned: Settings, tmp_path: Path
) -> None:
    question = "Please turn these rows into a table of name and date."
    # A hint naming a task other than the one the text suggests: the hint decides.
    done = guardrag(["route", question, "--hint", "code", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    decision = json.loads(done.stdout.strip().splitlines()[-1])
    assert decision["task"] == "code", decision
    assert decision["model"] == provisioned.router.tasks["code"].model
    assert 0.0 <= decision["confidence"] <= 1.0 and decision["ms"] >= 0
    shown = guardrag(["route", "What is the minimum password length?"], tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = dict(line.split(":", 1) for line in shown.stdout.splitlines() if ":" in line)
    assert {"task", "model", "confidence", "runner-up", "reason", "ms"} <= {
        k.strip() for k in lines
    }
    assert lines["model"].strip() in provisioned.generation.models


# ---------------------------------------------------------------- models list


def test_models_list_shows_each_model_where_it_is_and_whether_it_loads(
    provisioned: Settings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-reranker"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    done = guardrag(["models", "list"], tmp_path, GUARDRAG_RERANKER__MODEL=str(broken))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 4
    }
    embedder = rows["embedder"]
    assert provisioned.embedder.model in embedder and "yes" in embedder and "384 dims" in embedder
    # A local path that is not a model: found, and said not to load.
    reranker = rows["reranker"]
    assert str(broken)[:40] in reranker and "│ no " in reranker, reranker
    # Llama Guard is named by the profile but not shipped: missing, with where it would go.
    output_guard = next(line for role, line in rows.items() if "output" in role or "guard" in role)
    assert "Llama-Guard-3-1B" in output_guard and "missing" in output_guard


# ---------------------------------------------------------------- ingest


def test_no_prune_keeps_chunks_of_files_gone_from_the_folder_and_a_plain_run_removes_them(
    provisioned: Settings, tmp_path: Path
) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    write_docs(
        docs,
        remote="# Remote\n\nStaff may work remotely two days a week.\n",
        kayak="# Kayaks\n\nThe kayak rental desk opens at nine.\n",
    )
    first = ingest_report(docs, data)
    # Files are named by the folder ingested and their path in it.
    assert sorted(first["added"]) == ["docs/kayak.md", "docs/remote.md"]
    (docs / "kayak.md").unlink()
    kept = ingest_report(docs, data, "--no-prune")
    assert kept["removed"] == [] and kept["unchanged"] == ["docs/remote.md"]
    store = build_store(load_settings(data_dir=data))
    assert store.open_existing() is not None
    assert set(store.file_states()) == {"docs/kayak.md", "docs/remote.md"}
    store.close()
    pruned = ingest_report(docs, data)
    assert pruned["removed"] == ["docs/kayak.md"]
    store = build_store(load_settings(data_dir=data))
    assert store.open_existing() is not None
    assert set(store.file_states()) == {"docs/remote.md"}
    store.close()


def test_a_file_over_max_file_bytes_fails_alone_with_the_setting_named(
    provisioned: Settings, tmp_path: Path
) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    write_docs(docs, small="# Small\n\nShort.\n", large="# Large\n\n" + "Long text. " * 60)
    limit = "300"
    report = ingest_report(docs, data, GUARDRAG_INGEST__MAX_FILE_BYTES=limit)
    assert report["added"] == ["docs/small.md"]
    ((failed, reason),) = report["failed"]
    assert failed.endswith("large.md") and "ingest.max_file_bytes" in reason and limit in reason
    strict = guardrag(
        ["ingest", str(docs), "--strict"],
        tmp_path / "data-2",
        GUARDRAG_INGEST__MAX_FILE_BYTES=limit,
    )
    assert strict.returncode == 1 and "large.md" in strict.stdout + strict.stderr


def test_a_second_process_on_the_embedded_store_is_told_who_holds_it_and_what_to_do(
    provisioned: Settings, tmp_path: Path
) -> None:
    docs, data = tmp_path / "docs", tmp_path / "data"
    write_docs(docs, remote="# Remote\n\nStaff may work remotely two days a week.\n")
    ingest_report(docs, data)
    holder = build_store(load_settings(data_dir=data))
    assert holder.open_existing() is not None  # this process now holds the store
    try:
        second = guardrag(["ingest", str(docs)], data)
        message = " ".join((second.stdout + second.stderr).split())
        assert second.returncode != 0
        assert "open in another process" in message and "store.kind: server" in message
        assert "Traceback" not in message
    finally:
        holder.close()
    assert guardrag(["ingest", str(docs)], data).returncode == 0, "free again once closed"
