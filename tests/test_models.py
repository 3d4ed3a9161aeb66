import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from rag.models import (
    _try_load,
    check_model_files,
    list_models,
    missing_message,
    model_slug,
    resolve_model,
    resolve_spacy_package,
)
from rag.settings import Settings
from tests.conftest import ROOT


def test_minilm_resolves_from_its_pypi_package_without_the_hub(tmp_path: Path) -> None:
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2", tmp_path)
    assert path is not None and (path / "modules.json").exists()


def test_a_missing_model_message_names_model_path_and_fix(tmp_path: Path) -> None:
    assert resolve_model("BAAI/bge-reranker-base", tmp_path) is None
    message = missing_message("BAAI/bge-reranker-base", tmp_path, "reranker")
    assert "BAAI/bge-reranker-base" in message
    assert str(tmp_path / model_slug("BAAI/bge-reranker-base")) in message
    smollm = missing_message("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path, "generator")
    assert "guardrag models pull" in smollm


def test_models_list_reports_each_model_and_whether_it_loads(provisioned: Settings) -> None:
    statuses = {s.role: s for s in list_models(provisioned, try_load=True)}
    assert statuses["embedder"].loads is True and "384 dims" in statuses["embedder"].detail
    assert statuses["generator"].loads is True
    assert statuses["ner"].loads is True
    assert statuses["output_guard"].loads is False and statuses["output_guard"].path is None
    assert statuses["reranker"].loads is False
    assert [s.usable for s in statuses.values()] == [bool(s.loads) for s in statuses.values()]


def test_the_default_listing_checks_files_without_loading(provisioned: Settings) -> None:
    statuses = {s.role: s for s in list_models(provisioned)}
    assert all(s.loads is None for s in statuses.values() if s.path is not None)
    assert statuses["embedder"].usable and "384 dims" in statuses["embedder"].detail
    assert statuses["generator"].usable and "tensors" in statuses["generator"].detail
    assert statuses["ner"].usable
    assert not statuses["output_guard"].usable and statuses["output_guard"].path is None


def _embedder_at(settings: Settings, folder: Path) -> Settings:
    return settings.model_copy(
        update={"embedder": settings.embedder.model_copy(update={"model": str(folder)})}
    )


@pytest.fixture
def minilm_copy(provisioned: Settings, tmp_path: Path) -> Path:
    """A whole copy of the embedder's folder, to damage."""
    source = resolve_model(provisioned.embedder.model, provisioned.models_dir)
    assert source is not None
    return Path(shutil.copytree(source, tmp_path / "minilm"))


def _cut_weights_in_half(folder: Path) -> None:
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)


def _drop_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _drop_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _cut_tokenizer_short(folder: Path) -> None:
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:1000])


def _shard_named_but_absent(folder: Path) -> None:
    # Sharded weights: an index naming two shards, one of which never arrived.
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _dense_weights_cut_short(folder: Path) -> None:
    # A sentence-transformers module with weights of its own (a Dense projection after pooling).
    dense = folder / "3_Dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"in_features": 384, "out_features": 8}))
    save_file({"linear.weight": np.zeros((8, 384), dtype=np.float32)}, dense / "model.safetensors")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    assert check_model_files("embedder", folder)[0] is True
    os.truncate(dense / "model.safetensors", 100)


@pytest.mark.parametrize(
    ("damage", "named_file"),
    [
        (_cut_weights_in_half, "model.safetensors"),
        (_drop_weights, "weights"),
        (_drop_config, "config.json"),
        (_cut_tokenizer_short, "tokenizer.json"),
        (_shard_named_but_absent, "model-00002-of-00002.safetensors"),
        (_dense_weights_cut_short, "3_Dense/model.safetensors"),
    ],
)
def test_the_default_listing_reports_a_damaged_model_folder_as_not_usable(
    provisioned: Settings, minilm_copy: Path, damage: Callable[[Path], None], named_file: str
) -> None:
    whole = {s.role: s for s in list_models(_embedder_at(provisioned, minilm_copy))}
    assert whole["embedder"].usable is True and "384 dims" in whole["embedder"].detail
    damage(minilm_copy)
    listed = {s.role: s for s in list_models(_embedder_at(provisioned, minilm_copy))}
    embedder = listed["embedder"]
    assert embedder.path == minilm_copy
    assert embedder.usable is False and embedder.loads is None
    assert named_file in embedder.detail, embedder.detail


def test_a_weights_file_cut_short_fails_the_check_and_the_load_alike(
    provisioned: Settings, minilm_copy: Path
) -> None:
    # The file check stands in for loading only if both say the same of a damaged model.
    _cut_weights_in_half(minilm_copy)
    loaded = {s.role: s for s in list_models(_embedder_at(provisioned, minilm_copy), True)}
    assert loaded["embedder"].usable is False
    assert "not usable" in loaded["embedder"].detail
    assert check_model_files("embedder", minilm_copy)[0] is False
    assert _try_load("embedder", minilm_copy)[0] is False


def test_a_spacy_package_with_a_file_cut_short_is_not_usable(
    provisioned: Settings, tmp_path: Path
) -> None:
    # A copy of the installed package with its pip record, first on the path of a fresh
    # interpreter; its NER weights (a msgpack blob, no header) cut short.
    package = resolve_spacy_package(provisioned.guards.pii.spacy_model)
    assert package is not None
    installed = importlib.metadata.distribution(package)
    site = Path(str(installed.locate_file("")))
    dist_info = next(site.glob(f"{package}-*.dist-info"))
    shutil.copytree(site / package, tmp_path / package)
    shutil.copytree(dist_info, tmp_path / dist_info.name)
    ner_weights = next((tmp_path / package).glob("*/ner/model"))
    os.truncate(ner_weights, ner_weights.stat().st_size - 1)
    probe = (
        "from rag.models import list_models; from rag.settings import load_settings; "
        "ner = next(s for s in list_models(load_settings('local')) if s.role == 'ner'); "
        "print(repr((ner.usable, str(ner.path), ner.detail)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    usable, path, detail = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert path == str(tmp_path / package)
    assert usable is False and "ner/model" in detail, detail
