from pathlib import Path

import pytest

from rag.settings import SettingsError, load_settings


def test_local_profile_is_the_default_and_runs_everything_in_process() -> None:
    settings = load_settings()
    assert settings.profile == "local"
    assert settings.store.kind == "edge"
    assert all(m.backend == "vllm" for m in settings.generation.models.values())


def test_cluster_profile_points_at_servers_and_fails_closed() -> None:
    settings = load_settings("cluster")
    assert settings.store.kind == "server" and settings.store.url
    assert all(m.backend == "openai" and m.urls for m in settings.generation.models.values())
    assert settings.guards.output.policy.on_unavailable == "block"
    assert settings.embedder.query_instruction


def test_environment_overrides_the_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GUARDRAG_PROFILE", "cluster")
    monkeypatch.setenv("GUARDRAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GUARDRAG_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("GUARDRAG_RETRIEVAL__TOP_K", "9")
    settings = load_settings()
    assert settings.profile == "cluster"
    assert settings.data_dir == tmp_path / "data"
    assert settings.models_dir == tmp_path / "models"
    assert settings.retrieval.top_k == 9
    assert settings.audit_path == tmp_path / "data" / "audit.jsonl"


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(SettingsError, match=r"unknown profile 'laptop'.*cluster, local"):
        load_settings("laptop")


def test_a_yaml_path_is_a_profile(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text("retrieval:\n  top_k: 2\n")
    settings = load_settings(str(own))
    assert settings.profile == "mine"
    assert settings.retrieval.top_k == 2


def test_a_misspelt_key_in_a_profile_is_refused(tmp_path: Path) -> None:
    own = tmp_path / "typo.yaml"
    own.write_text("retrieval:\n  topk: 2\n")
    with pytest.raises(ValueError, match="topk"):
        load_settings(str(own))
