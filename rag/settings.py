"""The one typed settings object: a YAML profile, then `GUARDRAG_…` environment overrides.

Nothing else in guardrag reads the environment; everything is handed what it needs from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
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


# Where an encoder model (embedder, reranker) runs and how its batches multiply: rag/precision.py.
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16"]


class EmbedderSettings(_Section):
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # bge models retrieve better when the query (not the passage) carries this instruction.
    query_instruction: str = ""
    batch_size: int = 32
    max_seq_length: int = 256
    # auto: a CUDA GPU when torch sees one, else the CPU.
    device: Device = "auto"
    # auto: document batches in bfloat16 autocast where the hardware multiplies bfloat16
    # natively (AMX / AVX512-BF16 CPUs, recent GPUs), float32 elsewhere (rag/precision.py).
    precision: Precision = "auto"


class StoreSettings(_Section):
    # `edge`: Qdrant's engine in-process under data_dir; `server`: a Qdrant server or cluster.
    kind: Literal["edge", "server"] = "edge"
    url: str | None = None
    api_key: str | None = None
    collection: str = "guardrag"
    timeout_s: float = 10.0
    # The store's index, for both kinds (a server's collection gets them when guardrag
    # creates it), chosen by `make bench-scale` (evals/bench_scale.py: real chunk vectors
    # and mixes of them, 200 real questions, 2 cores):
    # recall@10 against exact search at 100k / 1M points, dense p95 beside exact p95.
    # HNSW links per point and candidates while building. Qdrant's 16 / 100 gave recall@10
    # 0.915 at 100k (misses are near-ties of mixed vectors); 32 / 200 gave 0.973-0.975, and
    # 0.980-0.982 at 1M, for a longer build (optimize() 678-823 s at 1M; 2-4× at 100k). Fixed
    # when a store is created: an existing store keeps the values it was built with.
    hnsw_m: int = Field(default=32, ge=4, le=128)
    hnsw_ef_construct: int = Field(default=200, ge=4)
    # HNSW candidates per search, swept on the same 1M index in two runs: 128 → recall
    # 0.940-0.945 (under the 0.95 floor), 256 → 0.980-0.982, 512 → 0.995-0.997. At 256 the
    # dense p95 was 0.95-2.1 ms, beside exact search's 71-99 ms.
    hnsw_ef: int = Field(default=256, ge=1)
    # `int8`: a scalar int8 copy of every vector, kept in RAM and searched first; the best
    # `oversampling` × limit candidates are rescored on the float32 vectors. Same recall at
    # 100k (0.976 against 0.973 without); optimize() 62 s against 145 s (one pair of runs on a
    # busy machine). A quarter of the float32 vectors' RAM: what lets them go to disk, below.
    quantization: Literal["none", "int8"] = "int8"
    # Qdrant's usual value, not swept: with it recall stays above the floor at every size.
    quantization_oversampling: float = Field(default=2.0, ge=1.0)
    # The float32 vectors memory-mapped (read on demand, for rescoring) rather than held in
    # RAM: with int8 in RAM, a reopened 1M store served dense and hybrid searches at 1.3 GiB
    # peak RSS (1.0 GiB of it heap) beside 1.4 GiB of float32 vectors alone.
    vectors_on_disk: bool = True


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
    device: Device = "auto"
    # float32 by default: under bfloat16 autocast the classifier head's logits keep about three
    # significant digits (5.02 and 5.03 both become 5.03125), and close candidates would tie.
    precision: Precision = "float32"


class Decoding(_Section):
    """How one model decodes. A small model answering greedily loops (the same sentence four
    times); a large one needs none of this, so it is per model, not global."""

    # vLLM's sampling options; 1.0 and 0.0 leave the model's distribution as it is.
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stop: tuple[str, ...] = ()
    # A cap on this model's answers below generation.max_tokens (None: no cap of its own).
    max_tokens: int | None = Field(default=None, ge=1)
    # End the answer where it starts a sentence it has already written (rag/decoding.py).
    cut_repeated_sentence: bool = False


class ModelEndpoint(_Section):
    """One generation model: served in-process by vLLM, or by vLLM OpenAI servers (one URL
    per replica)."""

    model: str
    backend: Literal["vllm", "openai"] = "vllm"
    urls: tuple[str, ...] = ()
    api_key: str | None = None
    max_model_len: int = 2048
    # No new token for this long fails the replica over; connecting gets far less.
    timeout_s: float = 60.0
    connect_timeout_s: float = 2.0
    # Models (names in generation.models) that answer when every replica of this one fails.
    fallbacks: tuple[str, ...] = ()
    decoding: Decoding = Decoding()


class PoolSettings(_Section):
    """How the model pool spreads requests over replicas and survives their failures."""

    # vLLM batches requests itself; past this many of ours on one replica, requests queue.
    max_concurrency_per_replica: int = 32
    queue_size: int = 64
    queue_timeout_s: float = 30.0
    retry_rounds: int = 2
    backoff_s: float = 0.25
    breaker_failures: int = 3
    breaker_reset_s: float = 20.0
    load_refresh_s: float = 0.5
    health_refresh_s: float = 5.0
    # A /health or /metrics read that takes longer gives up (the last reading stays).
    probe_timeout_s: float = 2.0


class TaskRoute(_Section):
    """Where one task goes. Failover is the model's own (generation.models.<name>.fallbacks),
    so a model falls back the same way whichever task chose it."""

    model: str
    # Caller hint words that lean towards this task; a hint matches a keyword it starts with
    # (`classif` covers classify and classification). A hint naming the task picks it outright.
    keywords: tuple[str, ...] = ()


class RouterSettings(_Section):
    # Questions the router is unsure of go here; tasks not listed in `tasks` go to default_model.
    default_task: str = "document_qa"
    default_model: str = "smollm2"
    tasks: dict[str, TaskRoute] = Field(default_factory=dict)
    # The task exemplar bank (JSONL rows `{"task", "text"}`); None: the one shipped in rag/.
    exemplars: Path | None = None
    # Below this probability for the best task, the default route is taken. 0.4 cost nothing
    # on the development split (evals/router.py) and sends vaguer questions to the default.
    min_confidence: float = 0.4
    # Each task scores the mean cosine similarity of its this-many nearest exemplars. On the
    # development split: 3 → 0.867, the centroid 0.829, 1 → 0.848; 5 and 8 within one question.
    neighbours: int = 3
    # Softmax temperature over task scores (cosine similarities, so small).
    temperature: float = 0.02
    # Added to a task's score per caller hint matching one of its keywords: at 0.05 a right
    # hint fixed 10 of 14 development misses; a misleading one led 1 right route in 6 astray.
    hint_weight: float = 0.05


class GenerationSettings(_Section):
    models: dict[str, ModelEndpoint] = Field(
        default_factory=lambda: {
            "smollm2": ModelEndpoint(
                model="HuggingFaceTB/SmolLM2-135M-Instruct",
                decoding=Decoding(cut_repeated_sentence=True),
            ),
        }
    )
    pool: PoolSettings = PoolSettings()
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
        # A date after a birth label; a UK National Insurance number (guardrails/pii_personal.py).
        "DATE_OF_BIRTH",
        "UK_NINO",
        # Found by the label in front of them (guardrails/pii_labelled.py).
        "US_BANK_NUMBER",
        "US_DRIVER_LICENSE",
        "US_PASSPORT",
        "IN_PAN",
        "IN_AADHAAR",
        "IN_VOTER",
    )
    score_threshold: float = 0.5
    # PII in retrieved chunks before the model sees them: `keep`, `pseudonymise` (placeholders
    # shared with the question's, restored for the asker) or `redact` (type only).
    chunks: Literal["keep", "pseudonymise", "redact"] = "keep"
    # Organisation-specific identifiers, e.g. {"EMPLOYEE_ID": "\\bEMP-\\d{6}\\b"}.
    custom_patterns: dict[str, str] = Field(default_factory=dict)
    # Given names and surnames of 100+ countries (guardrails/pii_names.py), for the names
    # spaCy's small English model misses; a compact lookup is derived once into models_dir.
    name_gazetteer: bool = True
    # Towns of 5,000 people or more (guardrails/pii_places.py): a postcode before a known
    # town is an address (`1010 Wien`), and a "name" that is a place stays a place.
    place_gazetteer: bool = True


class InjectionSettings(_Section):
    policy: GuardPolicy = GuardPolicy(on_flag="block", on_unavailable="block")
    # Each layer has its own threshold (scores are 0..1); the detector fuses them into one
    # score per verdict (guardrails/injection/detector.py).
    rules_threshold: float = 0.5
    # Small networks on the embedder's sentence vectors (guardrails/injection/head.py),
    # trained per embedder by `guardrag models train injection` (run by `guardrag models
    # pull`) into the models folder. Thresholds per use (questions, earlier turns, chunks at
    # ingest) come from its training run, calibrated on held-out benign text; a value here
    # overrides one.
    head: bool = True
    head_question_threshold: float | None = None
    head_turn_threshold: float | None = None
    head_chunk_threshold: float | None = None
    # Logistic regression over hashed n-grams and the rules' evidence, trained on the project's
    # own banks (`python -m guardrails.train_injection`; about 1.5 ms a check). Off by default:
    # it ranks better than the rules (development-set ROC AUC 0.84 vs 0.80), but at this
    # threshold (the training run's: above every held-out benign bank text) it flags nothing
    # the rules miss there, and lower thresholds chosen on the banks cost far more than 3 %
    # FPR on the development sets.
    learned: bool = False
    learned_threshold: float = 0.9718
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


class GuardSettings(_Section):
    """A guard's section when the guard needs nothing but its policy (`guards.<name>`)."""

    policy: GuardPolicy | None = None


class GuardsSettings(_Section):
    """One section per guard, by the name it is registered under (rag/compose.py GUARDS);
    Llama Guard's is `output`, as profiles have always called it. A guard without settings
    of its own takes a `GuardSettings` section; unknown names are refused when guards are
    built, with the registered names."""

    model_config = ConfigDict(extra="allow", frozen=True)

    pii: PIISettings = PIISettings()
    injection: InjectionSettings = InjectionSettings()
    output: OutputGuardSettings = OutputGuardSettings()
    # Registered guards that do not run, e.g. [system_prompt_leak].
    off: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _sections_of_other_guards(self) -> GuardsSettings:
        for name, section in (self.model_extra or {}).items():
            if not isinstance(section, GuardSettings):
                try:
                    self.model_extra[name] = GuardSettings.model_validate(section)  # type: ignore[index]
                except ValidationError as exc:
                    raise ValueError(f"guards.{name}: {exc}") from exc
        return self

    def section(self, name: str) -> BaseModel | None:
        """The settings section of the guard registered as `name`, if the profile has one."""
        key = "output" if name == "llama_guard" else name
        if key in type(self).model_fields and key != "off":
            return getattr(self, key)  # type: ignore[no-any-return]
        return (self.model_extra or {}).get(key)

    def policy_for(self, name: str, default: GuardPolicy | None = None) -> GuardPolicy:
        section = self.section(name)
        policy = getattr(section, "policy", None)
        return policy or default or GuardPolicy()


# Names that mean something besides a user: the shared collection, the single-user mode's user
# and the shared upload folder. Ownership is keyed so that no name can collide with them
# (ui/auth.py), and no one logs in under them either, so no screen or log can confuse the two.
RESERVED_USER_NAMES = frozenset({"shared", "local", "uploads"})
MAX_USER_NAME_CHARS = 64


def user_name_problem(name: str) -> str | None:
    """Why `name` cannot be a user's name (None: it can). For configured users and for names
    a trusted proxy sends alike."""
    if not name or name != name.strip():
        return "a user name is empty or has spaces around it"
    if len(name) > MAX_USER_NAME_CHARS:
        return f"a user name has over {MAX_USER_NAME_CHARS} characters"
    if not name.isprintable():
        return "a user name holds control characters"
    if name.casefold() in RESERVED_USER_NAMES:
        return f"{name!r} is reserved ({', '.join(sorted(RESERVED_USER_NAMES))})"
    return None


class ChatUser(_Section):
    # From `guardrag hash-password` (scrypt); the password itself is never stored.
    password_hash: str
    # Admins may upload to the shared collection and see quarantined chunks.
    admin: bool = False


class ChatSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 7860
    # Who may log in. None configured (and no trusted header): one user, "local", no login.
    users: dict[str, ChatUser] = Field(default_factory=dict)
    # Behind an authenticating proxy: the header that names the user (e.g. X-Forwarded-User),
    # believed only from the proxies' addresses; never set it on a port others can reach.
    trusted_header: str | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # Users whose name arrives in the trusted header and who are admins.
    header_admins: tuple[str, ...] = ()
    max_upload_bytes: int = 20_000_000
    max_upload_files: int = 20
    # What one user may keep uploaded in all (their own collection; admins' shared uploads
    # count too). Ingesting is the cost: a 500 KB file took 13.7 s of both cores under the one
    # ingest lock, so these bound how long one user can hold everyone's uploads back.
    max_user_bytes: int = 100_000_000
    max_user_files: int = 200

    @field_validator("users")
    @classmethod
    def _usable_user_names(cls, users: dict[str, ChatUser]) -> dict[str, ChatUser]:
        for name in users:
            problem = user_name_problem(name)
            if problem is not None:
                raise ValueError(f"chat.users: {problem}")
        return users


class HistorySettings(_Section):
    """Where chat history and feedback live (ui/history.py)."""

    # A database URL (postgresql://user:password@host:5432/guardrag) that every pod shares;
    # None: a SQLite file in data_dir, for one process. The schema is created and migrated
    # on start either way.
    url: str | None = None


class CacheSettings(_Section):
    """Answers reused for a repeated (or, over the threshold, paraphrased) question that
    retrieved the same chunks, per user; never for questions or passages holding PII."""

    enabled: bool = True
    ttl_s: float = 3600.0
    max_entries: int = 10_000
    # Cosine similarity of question embeddings for a semantic hit; None: exact hits only.
    # Off by default: with all-MiniLM-L6-v2, "minimum password length?" and "maximum password
    # length?" score 0.953 and retrieve the same chunks, above a true paraphrase's 0.95.
    semantic_threshold: float | None = None
    # A Redis URL (redis://host:6379/0): entries shared by every pod, expired by Redis;
    # None: in this process's memory (max_entries bounds only that one).
    url: str | None = None


class ApiSettings(_Section):
    """The OpenAI-compatible API of `guardrag serve`."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Bearer keys; none: the API is open, and `serve` refuses to listen beyond loopback.
    # From the environment as JSON: GUARDRAG_API__KEYS='["key-one", "key-two"]'.
    keys: tuple[str, ...] = ()
    rate_limit: str = "60/minute"  # per key, in the `limits` library's notation
    # Where the counts live, as a `limits` storage URI: memory:// counts per process, so
    # each pod grants the rate again; redis://host:6379/1 counts a key across every pod.
    rate_limit_storage: str = "memory://"
    # Requests answered at once; past it, 503 at once instead of an ever longer wait.
    max_concurrent: int = 16
    # Queue priority of API requests when every replica is busy; the chat's is 0 (first).
    priority: int = 1
    # A request body past this is refused (413) while it is read, before it is parsed. What
    # the API reads of a request is at most 28,000 characters (a 4,000-character question,
    # the two turns before it and four chain instructions of 4,000 each): 336 KB as JSON
    # even if every character is an escaped surrogate pair (12 bytes). 1 MiB leaves room for
    # the older turns clients resend; a 4 MB body of task hints held the server 10.6 s.
    # Not under 64 KiB: a 4,000-character question alone can be 48 KB of JSON.
    max_body_bytes: int = Field(default=1_048_576, ge=65_536)
    # With keys set, /docs, /redoc and /openapi.json, and /metrics, ask for a key too;
    # these open them to anyone who reaches the port (e.g. a scraper that sends no key).
    public_docs: bool = False
    public_metrics: bool = False


class TelemetrySettings(_Section):
    # OpenTelemetry spans per stage: `none`, `console`, or `otlp` (to otlp_endpoint).
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = None
    service_name: str = "guardrag"
    # Each audit line also to stdout as JSON, where a cluster's log pipeline collects it
    # (off on a laptop: `guardrag ask --json` prints one JSON document there).
    audit_stdout: bool = False


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
    cache: CacheSettings = CacheSettings()
    history: HistorySettings = HistorySettings()
    api: ApiSettings = ApiSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

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
    def history_path(self) -> Path | str:
        """The history database: `history.url` when one is set, else a SQLite file."""
        return self.history.url or self.data_dir / "history.sqlite"


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
    try:
        return from_profile(profile=path.stem, **overrides)
    except ValidationError as exc:
        # One line per wrong value, naming the setting, without echoing values (a users
        # table holds password hashes).
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise SettingsError(
            f"profile {path} (with GUARDRAG_… overrides) is not valid: {problems}"
        ) from None
