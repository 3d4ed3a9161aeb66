"""The composition root: the only place that builds models, clients and stores from settings.

Heavy parts (the embedder, Presidio, vLLM engines) are built once per process and shared by
every pipeline built here, so a chat server and a test suite load each model once.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
from collections.abc import Callable, Collection
from pathlib import Path

from guardrails.audit import AuditLog
from guardrails.canary import SystemPromptLeakGuard
from guardrails.injection import (
    EmbeddingHead,
    HeadWeights,
    InjectionDetector,
    InjectionRules,
    LayerThresholds,
    head_folder,
)
from guardrails.injection_classifier import InjectionClassifier
from guardrails.injection_exemplars import ExemplarSimilarity, load_bank
from guardrails.injection_learned import LearnedInjectionScorer
from guardrails.llama_guard import LlamaGuard
from guardrails.pii import PresidioPII
from guardrails.registry import GuardEntry, PolicedGuard, PresidioGuard
from guardrails.secrets import SecretsGuard
from guardrails.verdict import CheckedAs
from rag.cache import AnswerCache, RedisAnswerCache
from rag.embedder import SentenceEmbedder
from rag.generator import ModelUnavailable, OpenAIReplica, Replica, VLLMInProcess
from rag.guard_check import GuardChecker
from rag.models import missing_message, require_model, resolve_model, resolve_spacy_package
from rag.pipeline import Pipeline, Stages
from rag.pool import ModelPool, ModelReplicas
from rag.reranker import CrossEncoderReranker
from rag.router import TaskRouter, router_from_settings
from rag.settings import (
    Device,
    GuardPolicy,
    ModelEndpoint,
    Precision,
    Settings,
    SettingsError,
    TelemetrySettings,
)
from rag.shared_state import redis_client
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
    package: str,
    entities: tuple[str, ...],
    threshold: float,
    patterns: tuple[tuple[str, str], ...],
    names_lookup: Path | None,
    places_lookup: Path | None,
) -> PresidioPII:
    return PresidioPII(
        package,
        entities,
        threshold,
        dict(patterns),
        names_lookup=names_lookup,
        places_lookup=places_lookup,
    )


def build_pii(settings: Settings) -> PresidioPII:
    from guardrails import pii_places
    from guardrails.pii_names import LOOKUP_FILE

    cfg = settings.guards.pii
    # An absent spaCy package still builds a guard: it reports `unavailable` and policy decides.
    package = resolve_spacy_package(cfg.spacy_model) or cfg.spacy_model
    # Derived from the installed names-dataset on first use, once per models directory.
    names_lookup = settings.models_dir / LOOKUP_FILE if cfg.name_gazetteer else None
    places_lookup = settings.models_dir / pii_places.LOOKUP_FILE if cfg.place_gazetteer else None
    return _pii(
        package,
        cfg.entities,
        cfg.score_threshold,
        tuple(sorted(cfg.custom_patterns.items())),
        names_lookup,
        places_lookup,
    )


def build_injection(settings: Settings) -> InjectionDetector:
    cfg = settings.guards.injection
    notes: list[str] = []
    semantic = None
    if cfg.semantic:
        embedder = build_embedder(settings)
        semantic = _exemplar_layer(embedder, settings.data_dir / "cache")
    head = None
    if cfg.head:
        head, note = _head_layer(settings)
        notes += [note] if note else []
    learned = _learned_layer() if cfg.learned else None
    classifier = None
    if cfg.classifier_model:
        path = resolve_model(cfg.classifier_model, settings.models_dir)
        if path is None:
            notes.append(
                f"classifier {_shown_model_name(cfg.classifier_model)} not on disk (layer off)"
            )
        else:
            classifier = _classifier(cfg.classifier_model, path)
    thresholds = LayerThresholds(
        rules=cfg.rules_threshold,
        semantic=cfg.semantic_threshold,
        classifier=cfg.classifier_threshold,
        learned=cfg.learned_threshold,
        head_question=cfg.head_question_threshold,
        head_turn=cfg.head_turn_threshold,
        head_chunk=cfg.head_chunk_threshold,
    )
    return InjectionDetector(
        InjectionRules(), semantic, classifier, thresholds, "; ".join(notes), learned, head
    )


def _head_layer(settings: Settings) -> tuple[EmbeddingHead | None, str]:
    """The injection head trained for the profile's embedder, or why it is off."""
    folder = head_folder(settings.models_dir, settings.embedder.model)
    try:
        weights = _head_weights(folder)
    except FileNotFoundError:
        return None, (
            f"injection head for {_shown_model_name(settings.embedder.model)} not trained "
            "(layer off): run `guardrag models pull`"
        )
    embedder = build_embedder(settings)
    if weights.embedder != settings.embedder.model or weights.input_dimension != embedder.dimension:
        # A folder copied from elsewhere, or the embedder's files replaced: scoring would fail
        # on every question (a shape error, so every verdict unavailable); off, and said.
        return None, (
            f"injection head in {folder.name} was trained for {weights.embedder} "
            f"({weights.input_dimension} dimensions), not "
            f"{_shown_model_name(settings.embedder.model)} ({embedder.dimension}): layer off; "
            "run `guardrag models train injection`"
        )
    return EmbeddingHead(weights, embedder.embed_query, embedder.embed_documents), ""


@functools.cache
def _head_weights(folder: Path) -> HeadWeights:
    return HeadWeights.load(folder)


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
            _EDGE_STORES[path] = EdgeStore(path, cfg)
        return _EDGE_STORES[path]
    return ServerStore(
        cfg.collection, url=cfg.url, api_key=cfg.api_key, timeout_s=cfg.timeout_s, settings=cfg
    )


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
            name: ModelReplicas(
                name, build_replicas(settings, name, endpoint), limits, endpoint.decoding
            )
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


# Every guard, by the name its settings section (`guards.<name>`) and verdicts use: how it is
# built, which texts it checks, and its policy where the profile names none. List order is
# run order: for each text, guards whose policy redacts run in this order, each on the text
# the one before left, and the first blocking verdict is the one the asker is told about.
GUARDS: dict[str, GuardEntry[Settings]] = {
    "injection": GuardEntry(lambda s: build_injection(s), ("question", "chunk")),
    "secrets": GuardEntry(
        lambda _: SecretsGuard(), ("question", "chunk", "answer"), GuardPolicy(on_flag="redact")
    ),
    "pii": GuardEntry(lambda s: PresidioGuard(build_pii(s)), ("question",)),
    "system_prompt_leak": GuardEntry(lambda _: SystemPromptLeakGuard(), ("answer",)),
    "llama_guard": GuardEntry(lambda s: build_output_guard(s), ("answer",)),
}


def _answer_policy(policy: GuardPolicy) -> GuardPolicy:
    # An answer is shown while it streams: what a guard would redact in it is retracted.
    if policy.on_flag == "redact":
        return policy.model_copy(update={"on_flag": "block"})
    return policy


def build_guards(settings: Settings, checked_as: CheckedAs) -> tuple[PolicedGuard, ...]:
    """The guards that check one kind of text, each with its policy, in registry order."""
    configure_runtime(settings)
    cfg = settings.guards
    sections = {*(cfg.model_extra or {}), *cfg.off}
    unknown = sorted(sections - set(GUARDS) - {"output"})
    if unknown:
        raise SettingsError(
            f"guards.{unknown[0]} names no guard; registered guards: {', '.join(GUARDS)}"
        )
    guards = []
    for name, entry in GUARDS.items():
        if checked_as not in entry.checks or name in cfg.off:
            continue
        default = entry.default_policy
        policy = cfg.policy_for(name, default if isinstance(default, GuardPolicy) else None)
        if checked_as == "answer":
            policy = _answer_policy(policy)
        if checked_as == "chunk" and isinstance(default, GuardPolicy):
            # At ingest the registry's policy holds: a document's secrets are stored redacted
            # whatever a question's policy says (block would drop them from nowhere, warn
            # would store them as they are).
            policy = default
        guards.append(PolicedGuard(entry.build(settings), policy))
    return tuple(guards)


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


def build_audit(settings: Settings) -> AuditLog:
    return AuditLog(settings.audit_path, sys.stdout if settings.telemetry.audit_stdout else None)


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
    if cfg.url is not None:  # shared by every process pointed at the same Redis
        return RedisAnswerCache(redis_client(cfg.url), cfg.ttl_s, cfg.semantic_threshold)
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
        input_guards=build_guards(settings, "question"),
        output_guards=build_guards(settings, "answer"),
        reranker=reranker,
        reranker_missing=reranker_missing,
        router=router,
        pool=pool,
        audit=build_audit(settings),
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
        {kind: build_guards(settings, kind) for kind in ("question", "chunk", "answer")},
        settings.generation.system_prompt,
    )
