"""The composition root: the only place that builds models, clients and stores from settings.

Heavy parts (the embedder, Presidio, vLLM engines) are built once per process and shared by
every pipeline built here, so a chat server and a test suite load each model once.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

from guardrails.audit import AuditLog
from guardrails.injection import InjectionDetector, InjectionRules, LayerThresholds
from guardrails.injection_classifier import InjectionClassifier
from guardrails.injection_exemplars import ExemplarSimilarity, load_bank
from guardrails.injection_learned import LearnedInjectionScorer
from guardrails.llama_guard import LlamaGuard
from guardrails.pii import PresidioPII
from rag.cache import AnswerCache
from rag.embedder import SentenceEmbedder
from rag.generator import ModelUnavailable, OpenAIReplica, Replica, VLLMInProcess
from rag.guard_check import GuardChecker
from rag.models import missing_message, require_model, resolve_model, resolve_spacy_package
from rag.pipeline import Pipeline, Stages
from rag.pool import ModelPool, ModelReplicas
from rag.reranker import CrossEncoderReranker
from rag.router import TaskRouter, router_from_settings
from rag.settings import Device, ModelEndpoint, Precision, Settings, TelemetrySettings
from rag.store import CollectionInfo, EdgeStore, ServerStore, Store, StoreError
from rag.telemetry import AllTelemetry, OpenTelemetrySpans, PrometheusTelemetry, Telemetry

log = logging.getLogger(__name__)


def configure_runtime(settings: Settings) -> None:
    """Process-wide knobs that libraries only take from the environment."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM logs to stdout by default, which would corrupt `guardrag ask --json` and
    # `guard check` output; logs belong on stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # Nothing may reach a model hub at run time: models are provisioned by `models pull`.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@functools.cache
def _embedder(
    name: str,
    path: Path,
    instruction: str,
    batch: int,
    max_len: int,
    device: Device,
    precision: Precision,
) -> SentenceEmbedder:
    return SentenceEmbedder(name, path, instruction, batch, max_len, device, precision)


def build_embedder(settings: Settings) -> SentenceEmbedder:
    configure_runtime(settings)
    cfg = settings.embedder
    path = require_model(cfg.model, settings.models_dir, "embedder")
    return _embedder(
        cfg.model,
        path,
        cfg.query_instruction,
        cfg.batch_size,
        cfg.max_seq_length,
        cfg.device,
        cfg.precision,
    )


@functools.cache
def _pii(
    package: str, entities: tuple[str, ...], threshold: float, patterns: tuple[tuple[str, str], ...]
) -> PresidioPII:
    return PresidioPII(package, entities, threshold, dict(patterns))


def build_pii(settings: Settings) -> PresidioPII:
    cfg = settings.guards.pii
    # An absent spaCy package still builds a guard: it reports `unavailable` and policy decides.
    package = resolve_spacy_package(cfg.spacy_model) or cfg.spacy_model
    return _pii(
        package, cfg.entities, cfg.score_threshold, tuple(sorted(cfg.custom_patterns.items()))
    )


def build_injection(settings: Settings) -> InjectionDetector:
    cfg = settings.guards.injection
    semantic = None
    if cfg.semantic:
        embedder = build_embedder(settings)
        semantic = _exemplar_layer(embedder, settings.data_dir / "cache")
    learned = _learned_layer() if cfg.learned else None
    classifier, notes = None, ""
    if cfg.classifier_model:
        path = resolve_model(cfg.classifier_model, settings.models_dir)
        if path is None:
            notes = f"classifier {_shown_model_name(cfg.classifier_model)} not on disk (layer off)"
        else:
            classifier = _classifier(cfg.classifier_model, path)
    thresholds = LayerThresholds(
        rules=cfg.rules_threshold,
        semantic=cfg.semantic_threshold,
        classifier=cfg.classifier_threshold,
        learned=cfg.learned_threshold,
    )
    return InjectionDetector(
        InjectionRules(), semantic, classifier, thresholds, notes, learned=learned
    )


@functools.cache
def _learned_layer() -> LearnedInjectionScorer:
    # Package data (guardrails/exemplars/learned_injection.npz), loaded once per process.
    return LearnedInjectionScorer.from_package()


@functools.cache
def _exemplar_layer(embedder: SentenceEmbedder, cache_dir: Path) -> ExemplarSimilarity:
    return ExemplarSimilarity(
        embedder.embed_documents,
        load_bank("attacks"),
        load_bank("benign"),
        cache_dir=cache_dir,
        embedder_name=embedder.name,
    )


@functools.cache
def _classifier(name: str, path: Path) -> InjectionClassifier:
    return InjectionClassifier(name, path)


# One Edge shard may be open once per process (it locks its write-ahead log), so every
# pipeline and ingestion run in this process shares the store object for a path.
_EDGE_STORES: dict[Path, EdgeStore] = {}


def build_store(settings: Settings) -> Store:
    cfg = settings.store
    if cfg.kind == "edge":
        path = settings.store_path.resolve()
        if path not in _EDGE_STORES:
            _EDGE_STORES[path] = EdgeStore(path)
        return _EDGE_STORES[path]
    return ServerStore(cfg.collection, url=cfg.url, api_key=cfg.api_key, timeout_s=cfg.timeout_s)


def open_store_for_embedder(settings: Settings, embedder: SentenceEmbedder) -> Store:
    store = build_store(settings)
    store.ensure_collection(CollectionInfo(embedder.name, embedder.dimension))
    return store


_ENGINES: dict[tuple[str, int], VLLMInProcess] = {}


def shutdown_engines() -> None:
    for engine in _ENGINES.values():
        engine.shutdown()
    _ENGINES.clear()


atexit.register(shutdown_engines)


def _engine(settings: Settings, name: str, path: Path, max_model_len: int) -> VLLMInProcess:
    key = (str(path), max_model_len)
    if key not in _ENGINES:
        _ENGINES[key] = VLLMInProcess(name, path, max_model_len, settings.generation.kv_cache_gib)
    return _ENGINES[key]


def _openai_server_replicas(
    settings: Settings, name: str, endpoint: ModelEndpoint
) -> list[Replica]:
    """One replica per vLLM OpenAI server URL."""
    if not endpoint.urls:
        raise ModelUnavailable(
            f"generation.models.{name} has backend `openai` but no urls: list its vLLM "
            "servers' base URLs (http://host:8000/v1), one per replica"
        )
    return [
        OpenAIReplica(
            name,
            endpoint.model,
            url,
            endpoint.api_key,
            endpoint.timeout_s,
            endpoint.connect_timeout_s,
            settings.generation.pool.probe_timeout_s,
        )
        for url in endpoint.urls
    ]


def _in_process_replicas(settings: Settings, name: str, endpoint: ModelEndpoint) -> list[Replica]:
    """The one in-process vLLM engine for this model (shared by every pipeline here)."""
    path = require_model(endpoint.model, settings.models_dir, f"generator {name!r}")
    return [_engine(settings, name, path, endpoint.max_model_len)]


# A model backend is a function from its settings to replicas, registered here by the name
# `generation.models.<name>.backend` uses.
REPLICA_BACKENDS: dict[str, Callable[[Settings, str, ModelEndpoint], list[Replica]]] = {
    "openai": _openai_server_replicas,
    "vllm": _in_process_replicas,
}


def build_replicas(settings: Settings, name: str, endpoint: ModelEndpoint) -> list[Replica]:
    return REPLICA_BACKENDS[endpoint.backend](settings, name, endpoint)


def build_pool(settings: Settings) -> ModelPool:
    limits = settings.generation.pool
    models = settings.generation.models
    return ModelPool(
        {
            name: ModelReplicas(name, build_replicas(settings, name, endpoint), limits)
            for name, endpoint in models.items()
        },
        {name: endpoint.fallbacks for name, endpoint in models.items()},
        limits,
    )


def build_output_guard(settings: Settings) -> LlamaGuard:
    configure_runtime(settings)
    cfg = settings.guards.output
    excluded = cfg.excluded_categories
    if cfg.backend == "openai":
        endpoint = ModelEndpoint(model=cfg.model, backend="openai", urls=cfg.urls, timeout_s=30.0)
    else:
        path = resolve_model(cfg.model, settings.models_dir)
        if path is None:
            return LlamaGuard(
                _shown_model_name(cfg.model),
                None,
                missing_reason=_missing_for_users(cfg.model, settings.models_dir, "output guard"),
                excluded_categories=excluded,
            )
        endpoint = ModelEndpoint(model=str(path), backend="vllm", max_model_len=2048)
    replicas = ModelReplicas(
        "llama_guard", build_replicas(settings, "llama_guard", endpoint), settings.generation.pool
    )
    pool = ModelPool({"llama_guard": replicas}, {}, settings.generation.pool)

    async def complete(prompt: str) -> str:
        # Llama Guard answers in at most two short lines.
        text, _ = await pool.complete("llama_guard", prompt, 20)
        return text

    return LlamaGuard(_shown_model_name(cfg.model), complete, excluded_categories=excluded)


def _shown_model_name(model_id: str) -> str:
    """A model as callers may see it (verdict reasons, stage notes): its hub id, or only the
    folder's name when settings give a local path."""
    return Path(model_id).name if model_id.startswith(("/", ".", "~")) else model_id


def _missing_for_users(model_id: str, models_dir: Path, role: str) -> str:
    """A model that is not on disk, said without this server's folders: those go to the
    operator's log (and `guardrag models list`), with what to do."""
    # Info, not warning: a laptop without the optional models would print it at every start.
    log.info(missing_message(model_id, models_dir, role))
    return (
        f"{role} model {_shown_model_name(model_id)} is not on this server "
        "(`guardrag models list` there says where it belongs)"
    )


def build_reranker(settings: Settings) -> tuple[CrossEncoderReranker | None, str]:
    cfg = settings.reranker
    if not cfg.enabled:
        return None, "disabled in settings (reranker.enabled: false)"
    path = resolve_model(cfg.model, settings.models_dir)
    if path is None:
        return None, f"skipped: {_missing_for_users(cfg.model, settings.models_dir, 'reranker')}"
    return CrossEncoderReranker(cfg.model, path, cfg.min_score, cfg.device, cfg.precision), ""


def build_router(
    settings: Settings, embedder: SentenceEmbedder, known_models: Collection[str]
) -> TaskRouter:
    """The task router on the embedder retrieval already loaded; the exemplar bank is embedded
    once per process and embedder, and kept under the data directory."""
    return router_from_settings(
        settings.router, embedder, known_models, settings.data_dir / "cache"
    )


@functools.cache
def prometheus_metrics() -> PrometheusTelemetry:
    """One metrics registry per process: every pipeline in it adds to the same counters."""
    return PrometheusTelemetry()


@functools.cache
def _telemetry(cfg: TelemetrySettings) -> Telemetry:
    sinks: list[Telemetry] = [prometheus_metrics()]
    if cfg.otel_exporter != "none":
        sinks.append(OpenTelemetrySpans(cfg.otel_exporter, cfg.otlp_endpoint, cfg.service_name))
    return AllTelemetry(sinks)


def build_cache(settings: Settings) -> AnswerCache | None:
    cfg = settings.cache
    if not cfg.enabled:
        return None
    return AnswerCache(cfg.ttl_s, cfg.max_entries, cfg.semantic_threshold)


def build_pipeline(settings: Settings) -> Pipeline:
    """Everything a question needs, from one settings object."""
    configure_runtime(settings)
    embedder = build_embedder(settings)
    store = build_store(settings)
    if store.open_existing() is None:
        where = settings.store_path if settings.store.kind == "edge" else settings.store.url
        raise StoreError(f"no documents ingested yet in {where}: run `guardrag ingest PATH` first")
    # The embedder loads on first use; a pipeline loads it now, so a server starts ready (not
    # at its first question) and a model that cannot load stops it at start.
    embedder.load()
    store.ensure_collection(CollectionInfo(embedder.name, embedder.dimension))
    pool = build_pool(settings)
    reranker, reranker_missing = build_reranker(settings)
    router = build_router(settings, embedder, pool.models)
    stages = Stages(
        embedder=embedder,
        store=store,
        pii=build_pii(settings),
        injection=build_injection(settings),
        output_guard=build_output_guard(settings),
        reranker=reranker,
        reranker_missing=reranker_missing,
        router=router,
        pool=pool,
        audit=AuditLog(settings.audit_path),
        telemetry=_telemetry(settings.telemetry),
        cache=build_cache(settings),
    )
    return Pipeline(settings, stages)


def start_engines(pipeline: Pipeline) -> None:
    """Load in-process models now rather than on the first question."""
    for replicas in pipeline.stages.pool.models.values():
        for state in replicas.states:
            if isinstance(state.replica, VLLMInProcess):
                try:
                    state.replica.start()
                except ModelUnavailable as exc:
                    log.error("%s", exc)


def build_guard_checker(settings: Settings) -> GuardChecker:
    configure_runtime(settings)
    return GuardChecker(
        pii=build_pii(settings),
        injection=build_injection(settings),
        output_guard=build_output_guard(settings),
        settings=settings.guards,
    )
