from pathlib import Path

from rag.models import list_models, missing_message, model_slug, resolve_model
from rag.settings import Settings


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
    statuses = {s.role: s for s in list_models(provisioned)}
    assert statuses["embedder"].loads is True and "384 dims" in statuses["embedder"].detail
    assert statuses["generator"].loads is True
    assert statuses["ner"].loads is True
    assert statuses["output_guard"].loads is False and statuses["output_guard"].path is None
    assert statuses["reranker"].loads is False
