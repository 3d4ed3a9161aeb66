"""The one typed settings object: a YAML profile, then `GUARDRAG_…` environment overrides.

Nothing else in guardrag reads the environment; everything is handed what it needs from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
ENV_PREFIX = "GUARDRAG_"


class SettingsError(ValueError):
    """A profile or override that cannot be used; the message says what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OnFlag = Literal["block", "redact", "warn"]
OnUnavailable = Literal["block", "warn", "allow"]


class GuardPolicy(_Section):
    """What a guard's verdict leads to. Lives here, never inside the guard."""

    on_flag: OnFlag = "block"
    on_unavailable: OnUnavailable = "block"


class EmbedderSettings(_Section):
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # bge models retrieve better when the query (not the passage) carries this instruction.
    query_instruction: str = ""
    batch_size: int = 32
    max_seq_length: int = 256


class StoreSettings(_Section):
    # `edge`: Qdrant's engine in-process under data_dir; `server`: a Qdrant server or cluster.
    kind: Literal["edge", "server"] = "edge"
    url: str | None = None
    api_key: str | None = None
    collection: str = "guardrag"
    timeout_s: float = 10.0


class IngestSettings(_Section):
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 30
    # Chunks embedded and written per batch, across files: big batches keep the embedder
    # busy (one `encode` call sorts by length and pads less; slices of 256 cost ~10 % more
    # than one call in make bench-ingest). Lower it to bound memory.
    write_batch: int = 1024
    max_file_bytes: int = 20_000_000
    max_pdf_pages: int = 2000
    # A DOCX is a zip: refuse one that would unpack to more than this (decompression bombs).
    max_unzipped_bytes: int = 200_000_000
    extensions: tuple[str, ...] = (".md", ".markdown", ".txt", ".pdf", ".docx", ".html", ".htm")


class RetrievalSettings(_Section):
    # `hybrid`: dense and BM25 results fused by reciprocal rank; `dense`: embeddings only.
    mode: Literal["dense", "hybrid"] = "hybrid"
    top_k: int = 4
    candidates: int = 20
    # What to do with chunks that ingest flagged as injection: leave them out, or pass them
    # to the model inside a marked untrusted block.
    flagged_chunks: Literal["drop", "fence"] = "drop"


class RerankerSettings(_Section):
    model: str = "BAAI/bge-reranker-base"
    enabled: bool = True
    min_score: float | None = None


class ModelEndpoint(_Section):
    """One generation model: served in-process by vLLM, or by vLLM OpenAI servers."""

    model: str
    backend: Literal["vllm", "openai"] = "vllm"
    urls: tuple[str, ...] = ()
    api_key: str | None = None
    max_model_len: int = 2048
    timeout_s: float = 60.0


class RouteRule(_Section):
    task: str
    model: str
    # A question matching any of these (case-insensitive regular expressions) takes this route.
    patterns: tuple[str, ...] = ()


class RouterSettings(_Section):
    default_task: str = "document_qa"
    default_model: str = "smollm2"
    rules: tuple[RouteRule, ...] = ()


class GenerationSettings(_Section):
    models: dict[str, ModelEndpoint] = Field(
        default_factory=lambda: {
            "smollm2": ModelEndpoint(model="HuggingFaceTB/SmolLM2-135M-Instruct"),
        }
    )
    max_tokens: int = 160
    temperature: float = 0.0
    kv_cache_gib: float = 1.0
    system_prompt: str = (
        "You answer questions about the company's documents. Use only the numbered context "
        "passages. Cite passages like [1]. If the context does not hold the answer, say so."
    )


class PIISettings(_Section):
    policy: GuardPolicy = GuardPolicy(on_flag="redact", on_unavailable="block")
    spacy_model: str = "en_core_web_sm"
    entities: tuple[str, ...] = (
        "PERSON",
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "US_SSN",
        "IP_ADDRESS",
        "LOCATION",
        "URL",
    )
    score_threshold: float = 0.5
    # PII in retrieved chunks before the model sees them: `keep`, `pseudonymise` (placeholders
    # shared with the question's, restored for the asker) or `redact` (type only).
    chunks: Literal["keep", "pseudonymise", "redact"] = "keep"
    # Organisation-specific identifiers, e.g. {"EMPLOYEE_ID": "\\bEMP-\\d{6}\\b"}.
    custom_patterns: dict[str, str] = Field(default_factory=dict)


class InjectionSettings(_Section):
    policy: GuardPolicy = GuardPolicy(on_flag="block", on_unavailable="block")
    # Each layer flags on its own threshold (scores are 0..1).
    rules_threshold: float = 0.5
    # Exemplar similarity with the retrieval embedder: off by default, since with
    # all-MiniLM-L6-v2 it separated attacks from hard negatives poorly (see README).
    semantic: bool = False
    semantic_threshold: float = 0.75
    # A prompt-injection classifier, used when on disk (hub id or local path); None: no slot.
    classifier_model: str | None = "meta-llama/Llama-Prompt-Guard-2-86M"
    classifier_threshold: float = 0.8


class OutputGuardSettings(_Section):
    policy: GuardPolicy = GuardPolicy(on_flag="block", on_unavailable="block")
    model: str = "meta-llama/Llama-Guard-3-1B"
    backend: Literal["vllm", "openai"] = "vllm"
    urls: tuple[str, ...] = ()
    excluded_categories: tuple[str, ...] = ()
    check_question: bool = False
    # While an answer streams, the text so far is checked every this many characters
    # (0: only the finished answer).
    window_chars: int = 240


class GuardsSettings(_Section):
    pii: PIISettings = PIISettings()
    injection: InjectionSettings = InjectionSettings()
    output: OutputGuardSettings = OutputGuardSettings()


class ChatSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 7860


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "guardrag"


def _default_models_dir() -> Path:
    return Path.home() / ".cache" / "guardrag" / "models"


class Settings(BaseSettings):
    """Everything guardrag can be told. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    profile: str = "local"
    data_dir: Path = Field(default_factory=_default_data_dir)
    models_dir: Path = Field(default_factory=_default_models_dir)
    embedder: EmbedderSettings = EmbedderSettings()
    store: StoreSettings = StoreSettings()
    ingest: IngestSettings = IngestSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    reranker: RerankerSettings = RerankerSettings()
    router: RouterSettings = RouterSettings()
    generation: GenerationSettings = GenerationSettings()
    guards: GuardsSettings = GuardsSettings()
    chat: ChatSettings = ChatSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then the environment, then the profile's YAML.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    # Where things live, derived from data_dir so one override moves them all.
    @property
    def store_path(self) -> Path:
        return self.data_dir / "store" / self.store.collection

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.jsonl"

    @property
    def history_path(self) -> Path:
        return self.data_dir / "history.sqlite"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_file(profile: str) -> Path:
    """A profile is a name in profiles/ or a path to a YAML file of the same shape."""
    candidate = Path(profile).expanduser()
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise SettingsError(f"profile file {candidate} does not exist")
        return candidate
    named = PROFILES_DIR / f"{profile}.yaml"
    if not named.is_file():
        raise SettingsError(
            f"unknown profile {profile!r}; available profiles: {', '.join(available_profiles())} "
            f"(or give the path of a YAML file)"
        )
    return named


def load_settings(profile: str | None = None, **overrides: Any) -> Settings:
    """Build Settings from a profile (argument, else GUARDRAG_PROFILE, else `local`)."""
    chosen = profile or os.environ.get(f"{ENV_PREFIX}PROFILE") or "local"
    path = profile_file(chosen)
    # pydantic-settings reads the YAML file named in model_config; a subclass per load keeps
    # the class itself free of global state.
    from_profile = type(
        "Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path}}
    )
    return from_profile(profile=path.stem, **overrides)
