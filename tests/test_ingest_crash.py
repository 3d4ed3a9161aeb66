"""`kill -9` during ingestion, then a rerun: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.run import build_ingest_parts, ingest_folder
from rag.settings import Settings
from tests.conftest import EXAMPLES, ROOT, local_settings

pytestmark = pytest.mark.slow


def _corpus(root: Path, copies: int) -> Path:
    corpus = root / "corpus"
    for n in range(copies):
        target = corpus / f"copy-{n}"
        shutil.copytree(EXAMPLES, target)
        for file in target.rglob("*.*"):
            file.write_text(file.read_text() + f"\n\nRevision note {n} for {file.name}.\n")
    return corpus


def _store_contents(settings: Settings) -> set[tuple[str, str, str]]:
    parts = build_ingest_parts(settings)
    contents = {(c.id, c.path, c.file_hash) for c in parts.store.scroll_chunks()}
    parts.store.close()
    return contents


def _ingest_in_process(corpus: Path, settings: Settings) -> None:
    parts = build_ingest_parts(settings)
    report = ingest_folder(corpus, parts)
    parts.store.close()
    assert not report.failed


def _kill_after(corpus: Path, data_dir: Path, files_done: int, delay_s: float) -> None:
    env = {
        **os.environ,
        "GUARDRAG_DATA_DIR": str(data_dir),
        "COLUMNS": "250",
        # Small batches, so the kills land between and inside many embed-and-write steps.
        "GUARDRAG_INGEST__WRITE_BATCH": "48",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "ingest", str(corpus)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = 0
    for line in process.stdout:
        if " added " in f" {line}":
            seen += 1
            if seen >= files_done:
                # A delay lands the kill inside the next file's embedding or write, not only
                # between files.
                time.sleep(delay_s)
                os.kill(process.pid, signal.SIGKILL)
                break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"ingest ended before the kill ({seen} files)"


def test_kill_9_at_several_points_then_rerun_equals_a_clean_ingest(
    provisioned: Settings, tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path, copies=4)
    clean = local_settings(tmp_path / "clean")
    _ingest_in_process(corpus, clean)
    expected = _store_contents(clean)
    assert len(expected) > 300
    for files_done, delay_s in ((1, 0.0), (9, 0.05), (25, 0.12)):
        data_dir = tmp_path / f"killed-after-{files_done}"
        _kill_after(corpus, data_dir, files_done, delay_s)
        killed = local_settings(data_dir)
        _ingest_in_process(corpus, killed)
        assert _store_contents(killed) == expected, f"killed after {files_done} files"
