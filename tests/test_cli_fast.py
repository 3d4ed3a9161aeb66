"""The `guardrag` command starts fast: heavy libraries load where they are used, not on import.

Importing them all up front made `guardrag --help` take 7.7 s, 6.5 s of it imports (issue 17).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rag.embedder import SentenceEmbedder, dimension_on_disk
from rag.models import resolve_model
from rag.settings import Settings
from tests.conftest import ROOT

HEAVY = (
    "torch",
    "vllm",
    "spacy",
    "presidio_analyzer",
    "gradio",
    "sentence_transformers",
    "transformers",
    "sklearn",
)


def _heavy_modules_after(statement: str) -> list[str]:
    # A fresh interpreter: this test process has most of them imported already.
    probe = f"import sys; {statement}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # The last line: what the statement itself printed (a command's output) comes before it.
    loaded: list[str] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert _heavy_modules_after("import ui.cli") == []


def test_models_list_checks_files_without_importing_a_model_library(
    provisioned: Settings,
) -> None:
    # The listing reads each model's config, tokenizer and weights headers: importing torch,
    # transformers and sentence-transformers to load them took 6.7 s of its 6.8 s (issue 17).
    statement = (
        "from ui.cli import app; "
        "app(['models', 'list'], prog_name='guardrag', standalone_mode=False)"
    )
    assert _heavy_modules_after(statement) == []


def test_building_ingest_parts_loads_no_model(provisioned: Settings, tmp_path: Path) -> None:
    # An ingest run over an unchanged folder compares file hashes with the store: it needs the
    # store (and the embedder's name and dimension for it), never the embedder's model.
    classifier = provisioned.guards.injection.classifier_model
    if classifier and resolve_model(classifier, provisioned.models_dir) is not None:
        pytest.skip(f"{classifier} is on disk here, and the injection guard loads it when built")
    statement = (
        "from rag.settings import load_settings; from ingest.run import build_ingest_parts; "
        f"parts = build_ingest_parts(load_settings('local', data_dir={str(tmp_path)!r})); "
        "parts.store.close()"
    )
    assert _heavy_modules_after(statement) == []


def test_the_embedder_dimension_read_from_its_files_is_the_loaded_models(
    provisioned: Settings,
) -> None:
    path = resolve_model(provisioned.embedder.model, provisioned.models_dir)
    assert path is not None
    embedder = SentenceEmbedder(provisioned.embedder.model, path)
    assert dimension_on_disk(path) == embedder.dimension == 384
    embedder.load()
    assert embedder.dimension == embedder.load().get_embedding_dimension()


def test_a_model_folder_of_another_layout_has_no_dimension_on_disk(tmp_path: Path) -> None:
    # Two pooling modes concatenate: reading one width from the file would be wrong, so the
    # model is loaded and asked instead.
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 384,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": True,
            }
        )
    )
    assert dimension_on_disk(tmp_path) is None
    assert dimension_on_disk(tmp_path / "absent") is None
