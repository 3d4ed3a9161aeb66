"""The five suites of `guardrag eval`, each turning one measurement into dotted metric keys
(evals/metrics.py), plot data for the report, and reasons for what could not run."""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from evals.answers import (
    GROUNDEDNESS_METHOD,
    JudgedAnswer,
    answer_scores,
    ask_all_then_stop,
    judge,
    latency_scores,
)
from evals.guards import (
    ListedGuard,
    benign_flag_rates,
    document_chunks,
    head_training_texts,
    injection_report,
    injection_scores,
    listed_guards,
    llama_guard_agreement,
    near_copies,
    off_guards,
    presidio_of,
    read_jsonl,
)
from evals.llamaindex_baseline import BaselineMissing, BaselineRun, run_in_child
from evals.pii import pii_scores
from evals.progress import RunProgress
from evals.retrieval import (
    DOCS_FOLDER,
    KS,
    QAQuestion,
    evaluate,
    find_retrieval_set,
    load_questions,
    retrieval_set_in,
    scores_from,
)
from evals.scoring import percentile
from guardrails.injection import InjectionDetector
from guardrails.verdict import CheckedAs, GuardContext, is_available
from ingest.run import IngestReport, build_ingest_parts, ingest_folder
from rag.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

Row = TypeVar("Row")


def spread(rows: Sequence[Row], limit: int | None) -> list[Row]:
    """At most `limit` rows, evenly spaced through the file so every document and kind is
    represented (the files are grouped by document or source); all rows when no limit."""
    if limit is None or limit >= len(rows):
        return list(rows)
    return [rows[(i * len(rows)) // limit] for i in range(limit)]


@dataclass(frozen=True)
class EvalData:
    """Where each labelled set is; a set may be absent (its part is then reported so). `root`
    is a folder of sets, or the retrieval set's own folder (then the other sets are absent)."""

    root: Path

    def first(self, *names: str) -> Path | None:
        return next((self.root / n for n in names if (self.root / n).is_file()), None)

    @property
    def retrieval_qa(self) -> Path:
        """The retrieval set; a ValueError naming what was looked for where when absent."""
        return find_retrieval_set(self.root)

    @property
    def pii(self) -> Path | None:
        return self.first("pii.jsonl", "pii_dev.jsonl")

    @property
    def injection(self) -> Path | None:
        return self.first("injection.jsonl", "injection_dev.jsonl")

    @property
    def benign(self) -> Path | None:
        return self.first("benign.jsonl", "benign_dev.jsonl")

    @property
    def moderation(self) -> Path | None:
        return self.first("moderation.jsonl", "moderation_dev.jsonl")

    @property
    def router(self) -> Path | None:
        found = self.first("router.jsonl", "router_dev.jsonl", "router_labelled.jsonl")
        shipped = ROOT / "evals" / "data" / "router_labelled.jsonl"
        return found or (shipped if shipped.is_file() else None)

    def files_used(self) -> list[Path]:
        sets = [self.pii, self.injection, self.benign, self.moderation, self.router]
        files = [p for p in sets if p is not None]
        retrieval_qa = retrieval_set_in(self.root)
        if retrieval_qa is not None:
            files += sorted(p for p in retrieval_qa.rglob("*") if p.is_file())
        return files

    def check_for(self, suites: Sequence[str]) -> None:
        """Refuse, before any model loads, a run whose suites need the retrieval set when it
        is absent; the other sets are optional (their parts are reported as unavailable)."""
        needing = [name for name in suites if name in NEEDS_RETRIEVAL_SET]
        if not needing:
            return
        try:
            find_retrieval_set(self.root)
        except ValueError as exc:
            others = ", ".join(name for name in SUITE_FUNCTIONS if name not in NEEDS_RETRIEVAL_SET)
            raise ValueError(
                f"{', '.join(needing)} cannot run without a retrieval set ({others} can): {exc}"
            ) from exc


@dataclass(frozen=True)
class DocumentChunks:
    """Document chunks as benign rows (kind = folder), their vectors as ingest computes them,
    and why the retrieval set's documents are not among them ("" when they are)."""

    rows: list[dict[str, Any]]
    vectors: Any
    retrieval_qa_missing: str


@dataclass(frozen=True)
class SuiteResult:
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


class SharedWork:
    """Work several suites need, done once per run: the QA corpus in the store, the stock
    LlamaIndex baseline, and the pipeline's answers."""

    def __init__(
        self,
        settings: Settings,
        data: EvalData,
        progress: RunProgress,
        limit: int | None,
        answers_limit: int,
        llamaindex: bool,
    ) -> None:
        self.settings = settings
        self.data = data
        self.progress = progress
        self.limit = limit
        self.answers_limit = answers_limit if limit is None else min(limit, answers_limit)
        self.llamaindex_enabled = llamaindex
        self.ingest_report: IngestReport | None = None

    @functools.cached_property
    def questions(self) -> list[QAQuestion]:
        return spread(load_questions(self.data.retrieval_qa), self.limit)

    @functools.cached_property
    def benign_questions(self) -> list[dict[str, Any]]:
        """The benign set's rows (a spread sample); empty when the set is absent."""
        return [] if self.data.benign is None else spread(read_jsonl(self.data.benign), self.limit)

    @functools.cached_property
    def document_chunks(self) -> DocumentChunks:
        """The shipped examples' and the retrieval set's documents, cut and embedded as ingest
        does them (at most `limit` chunks)."""
        from rag.compose import build_embedder

        folders = [ROOT / "examples"]
        missing = ""
        try:
            folders.append(self.data.retrieval_qa / "docs")
        except ValueError as exc:
            missing = str(exc)
        folders = [f for f in folders if f.is_dir()]
        rows, vectors = document_chunks(folders, build_embedder(self.settings), self.limit)
        return DocumentChunks(rows, vectors, missing)

    def benign_texts(self, kind: CheckedAs) -> tuple[list[str], str]:
        """Benign text to check as `kind`, or why there is none: questions from the benign
        set; document chunks as chunks, and as answers (an answer quotes the documents)."""
        if kind == "question":
            if self.data.benign is None:
                return [], f"no benign set (benign.jsonl or benign_dev.jsonl) in {self.data.root}"
            return [row["text"] for row in self.benign_questions], ""
        if kind in ("chunk", "answer"):
            rows = self.document_chunks.rows
            return [row["text"] for row in rows], "" if rows else "no documents to cut into chunks"
        return [], f"no benign text of the kind {kind!r}"

    def ensure_corpus(self) -> IngestReport:
        if self.ingest_report is None:
            parts = build_ingest_parts(self.settings)
            self.ingest_report = ingest_folder(self.data.retrieval_qa / DOCS_FOLDER, parts)
            parts.store.close()
        return self.ingest_report

    @functools.cached_property
    def llamaindex(self) -> BaselineRun | BaselineMissing:
        if not self.llamaindex_enabled:
            return BaselineMissing("not run (--no-llamaindex)")
        self.progress.note(
            f"stock LlamaIndex: ingest {self.data.retrieval_qa.name} and ask "
            f"{len(self.questions)} questions (child process)"
        )
        return run_in_child(
            self.data.retrieval_qa, [q.id for q in self.questions], self.settings.profile
        )

    @functools.cached_property
    def _answers(self) -> tuple[list[JudgedAnswer], str] | Exception:
        """Asked once: a pipeline that cannot start fails the answers and latency suites
        with one error, without loading the generator twice."""
        try:
            return self._ask_and_judge()
        except Exception as exc:  # noqa: BLE001 - recorded by the runner as the suites' error
            return exc

    @property
    def answers(self) -> tuple[list[JudgedAnswer], str]:
        """The pipeline's judged answers to a spread sample, and the models that answered."""
        outcome = self._answers
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _ask_and_judge(self) -> tuple[list[JudgedAnswer], str]:
        from rag.compose import build_embedder, build_pipeline, start_engines

        self.ensure_corpus()
        questions = spread(load_questions(self.data.retrieval_qa), self.answers_limit)
        pipeline = build_pipeline(self.settings)
        self.progress.note("loading the generator (vLLM on CPU takes about a minute)")
        start_engines(pipeline)
        with self.progress.step("answers: asking the pipeline", len(questions)) as advance:
            answers = ask_all_then_stop(pipeline, questions, advance)
        embedder = build_embedder(self.settings)
        count_tokens = TokenCounter(self.settings)
        judged = [
            judge(a, q, embedder, count_tokens) for a, q in zip(answers, questions, strict=True)
        ]
        models = sorted({a.route.model for a in answers if a.route is not None})
        described = ", ".join(
            self.settings.generation.models[m].model
            for m in models
            if m in self.settings.generation.models
        )
        return judged, described or "no model answered"


class TokenCounter:
    """Counts an answer's tokens with the tokenizer of the model that wrote it (its route),
    where that model's files are on disk; None for a server-only model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tokenizers: dict[str, Any] = {}

    def __call__(self, text: str, model_name: str) -> int | None:
        if model_name not in self._tokenizers:
            self._tokenizers[model_name] = self._load(model_name)
        tokenizer = self._tokenizers[model_name]
        return None if tokenizer is None else len(tokenizer.encode(text, add_special_tokens=False))

    def _load(self, model_name: str) -> Any:
        from rag.models import resolve_model

        endpoint = self.settings.generation.models.get(model_name)
        path = None if endpoint is None else resolve_model(endpoint.model, self.settings.models_dir)
        if path is None:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in values.items() if not math.isnan(float(v))}


# ---------------------------------------------------------------- retrieval


def retrieval_suite(work: SharedWork) -> SuiteResult:
    questions = work.questions
    with work.progress.step("retrieval: dense, hybrid (+ rerank)", len(questions)) as advance:
        run = evaluate(work.data.retrieval_qa, work.settings, questions, advance)
    work.ingest_report = run.ingest
    scores = dict(run.scores)
    unavailable = {f"retrieval.{mode}": why for mode, why in run.skipped.items()}
    baseline = work.llamaindex
    if isinstance(baseline, BaselineRun):
        scores["llamaindex"] = scores_from("llamaindex", baseline.ranked)
    else:
        unavailable["retrieval.llamaindex"] = baseline.reason
    metrics = {
        f"retrieval.{mode}.{key}": value
        for mode, s in scores.items()
        for key, value in s.as_dict().items()
    }
    by_k = {
        mode: {"hit": [s.hit_at[k] for k in KS], "recall": [s.recall_at[k] for k in KS]}
        for mode, s in scores.items()
    }
    notes = (
        f"{len(questions)} questions; documents ingested: {len(run.ingest.added)} files, "
        f"{run.ingest.chunks_written} chunks; hit@k and MRR at document level, recall@k at "
        "chunk level (a top-k chunk of the gold document holds a gold answer string)",
    )
    return SuiteResult(_rounded(metrics), {"ks": list(KS), "by_k": by_k}, unavailable, notes)


# ---------------------------------------------------------------- guards


def guards_suite(work: SharedWork) -> SuiteResult:
    """Every guard the profile runs, from the lists the pipeline runs (evals/guards.py
    `listed_guards`): by its labelled evaluation where it has one, else by the share of
    benign text of each kind it checks that it flags. A guard registered in rag/compose.py
    GUARDS is measured here without an edit."""
    parts = [
        LABELLED_GUARD_EVALS.get(listed.name, benign_flags_part)(work, listed)
        for listed in listed_guards(work.settings)
    ]
    off = "off in this profile (guards.off)"
    parts.append(
        SuiteResult(unavailable={f"guards.{name}": off for name in off_guards(work.settings)})
    )
    return SuiteResult(
        _rounded({k: v for part in parts for k, v in part.metrics.items()}),
        {k: v for part in parts for k, v in part.details.items()},
        {k: v for part in parts for k, v in part.unavailable.items()},
        tuple(note for part in parts for note in part.notes),
    )


def pii_part(work: SharedWork, listed: ListedGuard) -> SuiteResult:
    """Presidio's spans against the labelled PII set, per entity type."""
    presidio = presidio_of(listed.guard)
    if presidio is None:  # another PII guard registered under the name: no spans to score
        return benign_flags_part(work, listed)
    enabled = ", ".join(work.settings.guards.pii.entities)
    notes = (
        "PII micro scores count every labelled entity type, also those the profile does not "
        f"enable (enabled: {enabled}); a type it does not enable scores 0 recall",
    )
    data = work.data
    if data.pii is None:
        missing = f"no PII set (pii.jsonl or pii_dev.jsonl) in {data.root}"
        return SuiteResult(unavailable={"guards.pii": missing}, notes=notes)
    rows = spread(read_jsonl(data.pii), work.limit)
    with work.progress.step("guards: PII", len(rows)) as advance:
        pii = pii_scores(presidio, rows, advance)
    metrics = {f"guards.pii.{ent}.{k}": v for ent, s in pii.items() for k, v in s.items()}
    return SuiteResult(metrics, {"pii": pii}, {}, notes)


def injection_part(work: SharedWork, listed: ListedGuard) -> SuiteResult:
    """The detector's layers on the labelled attack and benign sets, on its head's held-out
    data and on real document chunks."""
    detector = listed.guard
    if not isinstance(detector, InjectionDetector):
        return benign_flags_part(work, listed)
    data = work.data
    if data.injection is None or data.benign is None:
        missing = f"needs injection(_dev).jsonl and benign(_dev).jsonl in {data.root}"
        return SuiteResult(unavailable={"guards.injection": missing})
    attacks = spread(read_jsonl(data.injection), work.limit)
    benign = work.benign_questions
    attacks, benign, left_out, notes = _without_near_copies(attacks, benign)
    with work.progress.step("guards: injection", len(attacks) + len(benign)) as advance:
        injection = injection_scores(detector, attacks, benign, advance)
    details: dict[str, Any] = {"injection": injection_report(injection) | {"left_out": left_out}}
    unavailable: dict[str, str] = {}
    metrics = _injection_metrics("guards.injection", injection)
    metrics["guards.injection.near_copies_left_out"] = len(left_out)
    metrics |= _injection_extra_sets(work, detector, details, unavailable)
    return SuiteResult(metrics, details, unavailable, notes)


def _without_near_copies(
    attacks: list[dict[str, Any]], benign: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], tuple[str, ...]]:
    """The labelled rows less those a training text of the injection head nearly copies (the
    public corpora repost the same payloads): attacks, benign, the ids left out, a note."""
    from guardrails.injection.corpora import CorporaMissing

    try:
        training = head_training_texts()
    except CorporaMissing as exc:
        return attacks, benign, [], (f"injection: near copies of training text not checked: {exc}",)
    rows = [*attacks, *benign]
    copies = set(near_copies([row["text"] for row in rows], training))
    left_out = [str(rows[i].get("id", i)) for i in sorted(copies)]
    note = (
        f"injection: {len(left_out)} labelled rows left out, near copies of texts the trained "
        f"head learned from ({', '.join(left_out) or 'none'})"
    )
    kept_attacks = [row for i, row in enumerate(attacks) if i not in copies]
    kept_benign = [row for i, row in enumerate(benign, start=len(attacks)) if i not in copies]
    return kept_attacks, kept_benign, left_out, (note,)


def llama_guard_part(work: SharedWork, listed: ListedGuard) -> SuiteResult:
    """The output guard's agreement with the labelled moderation set."""
    guard = listed.guard
    if not is_available(guard):
        probe = asyncio.run(guard.check("", GuardContext(checked_as="answer")))
        return SuiteResult(unavailable={"guards.llama_guard": probe.reason})
    if work.data.moderation is None:
        missing = f"no labelled moderation set (moderation.jsonl) in {work.data.root}"
        return SuiteResult(unavailable={"guards.llama_guard": missing})
    rows = spread(read_jsonl(work.data.moderation), work.limit)
    with work.progress.step("guards: Llama Guard", len(rows)) as advance:
        agreement = llama_guard_agreement(guard, rows, advance)
    metrics = {
        "guards.llama_guard.agreement": agreement.agreement,
        "guards.llama_guard.unsafe_precision": agreement.unsafe_precision,
        "guards.llama_guard.unsafe_recall": agreement.unsafe_recall,
        "guards.llama_guard.rows": agreement.rows,
    }
    return SuiteResult(metrics)


def benign_flags_part(work: SharedWork, listed: ListedGuard) -> SuiteResult:
    """A guard without a labelled set: for each kind of text it checks, the share of benign
    text of that kind it flags (questions from the benign set; document chunks, also checked
    as answers, since answers quote the documents) and its latency."""
    metrics: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for kind in listed.checks:
        prefix = f"guards.{listed.name}.{kind}"
        texts, missing = work.benign_texts(kind)
        if missing:
            unavailable[prefix] = missing
            continue
        step = f"guards: {listed.name} on benign text as {kind}s"
        with work.progress.step(step, len(texts)) as advance:
            flags = benign_flag_rates(listed.guard, kind, texts, work.settings, advance)
        if flags.unjudged == flags.rows:
            unavailable[prefix] = flags.unavailable_reason or f"no benign {kind} to check"
            continue
        metrics |= {
            f"{prefix}.fpr": flags.fpr,
            f"{prefix}.rows": flags.rows - flags.unjudged,
            f"{prefix}.p50_ms": flags.p50_ms,
            f"{prefix}.p95_ms": flags.p95_ms,
        }
    kinds = ", ".join(listed.checks)
    note = f"{listed.name} (no labelled set): share of benign text flagged as {kinds}"
    return SuiteResult(metrics, {}, unavailable, (note,))


# The guards with a labelled evaluation of their own, by registered name; every other guard
# the profile runs is measured by `benign_flags_part`.
LABELLED_GUARD_EVALS: dict[str, Callable[[SharedWork, ListedGuard], SuiteResult]] = {
    "injection": injection_part,
    "pii": pii_part,
    "llama_guard": llama_guard_part,
}


def _injection_metrics(prefix: str, scores: Any) -> dict[str, float]:
    metrics = {
        f"{prefix}.tpr": scores.decision.tpr,
        f"{prefix}.fpr": scores.decision.fpr,
        f"{prefix}.attacks": scores.attacks,
        f"{prefix}.benign": scores.benign,
    }
    for kind, (rate_name, value, _) in scores.by_kind.items():
        metrics[f"{prefix}.by_kind.{kind}.{rate_name}"] = value
    for layer in scores.layers:
        metrics[f"{prefix}.{layer.layer}.auc"] = layer.roc.auc
    return metrics


def _injection_extra_sets(
    work: SharedWork,
    detector: InjectionDetector,
    details: dict[str, Any],
    unavailable: dict[str, str],
) -> dict[str, float]:
    """The injection guard on the held-out split of its head's training data (as questions)
    and on real document chunks (as chunks at ingest: the false positives that lose answers)."""
    from evals.guards import held_out_rows
    from guardrails.injection.corpora import CorporaMissing

    metrics: dict[str, float] = {}
    try:
        rows = spread(held_out_rows(), work.limit)
    except CorporaMissing as exc:
        unavailable["guards.injection_held_out"] = str(exc)
    else:
        attacks = [r for r in rows if r["label"] == "attack"]
        benign = [r for r in rows if r["label"] == "benign"]
        with work.progress.step("guards: injection held-out", len(rows)) as advance:
            held = injection_scores(detector, attacks, benign, advance)
        metrics |= _injection_metrics("guards.injection_held_out", held)
        details["injection_held_out"] = injection_report(held)
    documents = work.document_chunks
    if documents.retrieval_qa_missing:
        unavailable["guards.injection_chunks.retrieval_qa"] = documents.retrieval_qa_missing
    with work.progress.step("guards: injection on document chunks", len(documents.rows)) as advance:
        chunks = injection_scores(detector, [], documents.rows, advance, "chunk", documents.vectors)
    metrics |= {
        "guards.injection_chunks.fpr": chunks.decision.fpr,
        "guards.injection_chunks.chunks": chunks.benign,
    }
    for kind, (_, value, _) in chunks.by_kind.items():
        metrics[f"guards.injection_chunks.by_folder.{kind}.fpr"] = value
    details["injection_chunks"] = injection_report(chunks)
    return metrics


# ---------------------------------------------------------------- router


def _build_router(settings: Settings) -> Any:
    """The router as the pipeline builds it: the composition root's builder once it exists,
    the router module's own settings reader until then."""
    import rag.compose
    from rag.compose import build_embedder

    embedder = build_embedder(settings)
    models = settings.generation.models
    if hasattr(rag.compose, "build_router"):
        return rag.compose.build_router(settings, embedder, models)
    from rag.router import router_from_settings  # type: ignore[attr-defined]

    return router_from_settings(settings.router, embedder, models)


def router_suite(work: SharedWork) -> SuiteResult:
    try:
        from evals.router import evaluate_router, load_router_rows
    except ImportError as exc:
        return SuiteResult(unavailable={"router": f"the router evaluation is not built: {exc}"})
    if work.data.router is None:
        return SuiteResult(unavailable={"router": "no labelled router set"})
    rows = load_router_rows(work.data.router)
    # The held-out split when the set has one: the dev split chose the router's settings.
    held_out = [r for r in rows if r.split == "test"]
    rows = spread(held_out or rows, work.limit)
    router = _build_router(work.settings)
    with work.progress.step("router", 1) as advance:
        report = evaluate_router(router, rows)
        advance()
    split = "test split" if held_out else "all rows"
    return router_result(
        report, f"{report.total} labelled questions ({split}) from {work.data.router}"
    )


def router_result(report: Any, note: str) -> SuiteResult:
    """Metric keys from evals/router.py's RouterReport: accuracy, accuracy per task, and the
    confusion matrix (rows: labelled task, columns: routed task) for the report."""
    per_task = {t.task: t.accuracy for t in report.per_task}
    metrics = {
        "router.accuracy": report.accuracy,
        "router.macro_accuracy": sum(per_task.values()) / max(1, len(per_task)),
        "router.rows": report.total,
        "router.defaulted": report.defaulted,
        "router.p50_ms": report.ms_p50,
        "router.p95_ms": report.ms_p95,
    }
    metrics |= {f"router.class.{task}.accuracy": value for task, value in per_task.items()}
    details = {
        "labels": list(report.labels),
        "confusion": [list(row) for row in report.confusion],
        "misses": [m.__dict__ for m in report.misses[:20]],
    }
    return SuiteResult(_rounded(metrics), details, {}, (note,))


# ---------------------------------------------------------------- answers and latency


def answers_suite(work: SharedWork) -> SuiteResult:
    judged, generator = work.answers
    scores = answer_scores(judged)
    metrics = {f"answers.{k}": v for k, v in scores.as_metrics().items()}
    examples = [
        {"id": j.question_id, "status": j.status, "text": j.text[:300], "exact": j.exact}
        for j in judged[:8]
    ]
    notes = (
        f"a spread sample of {scores.questions} questions (--answers-limit; generation is the "
        f"cost: {generator} on CPU)",
        f"groundedness: {GROUNDEDNESS_METHOD}",
        "exact: a gold answer appears in the answer after SQuAD normalisation; fuzzy: rapidfuzz "
        "partial_ratio ≥ 80; citation precision: share of cited passages (inline [n], else "
        "every source shown) from the gold document holding a gold answer",
    )
    return SuiteResult(_rounded(metrics), {"examples": examples}, {}, notes)


def latency_suite(work: SharedWork) -> SuiteResult:
    judged, generator = work.answers
    scores = latency_scores(judged)
    metrics: dict[str, float] = {"latency.requests": scores.requests}
    for stage, (p50, p95) in scores.stages.items():
        metrics[f"latency.{stage}.p50_ms"] = p50
        metrics[f"latency.{stage}.p95_ms"] = p95
    if scores.first_token is not None:
        metrics["latency.first_token.p50_ms"], metrics["latency.first_token.p95_ms"] = (
            scores.first_token
        )
    unavailable = {}
    if scores.tokens_per_s is not None:
        metrics["latency.generate.tokens_per_s"] = scores.tokens_per_s
    else:
        unavailable["latency.generate.tokens_per_s"] = f"no local tokenizer for {generator}"
    if scores.non_generation_share is not None:
        metrics["latency.non_generation_share"] = scores.non_generation_share
    report = work.ensure_corpus()
    if report.chunks_written and report.seconds:
        metrics["latency.ingest.chunks_per_s"] = report.chunks_written / report.seconds
        metrics["latency.ingest.files_per_s"] = len(report.added) / report.seconds
    baseline = work.llamaindex
    if isinstance(baseline, BaselineRun):
        spent = [r.ms for r in baseline.ranked]
        metrics["latency.llamaindex.retrieve.p50_ms"] = percentile(spent, 50)
        metrics["latency.llamaindex.retrieve.p95_ms"] = percentile(spent, 95)
        metrics["latency.llamaindex.ingest.chunks_per_s"] = baseline.chunks_per_s
        metrics["latency.llamaindex.ingest.files_per_s"] = baseline.files / baseline.ingest_seconds
    else:
        unavailable["latency.llamaindex"] = baseline.reason
    notes = (
        f"{scores.requests} requests through the pipeline, one at a time; tokens/s counts the "
        f"answer's tokens with {generator}'s tokenizer over the generate stage (prefill "
        "included); the retrieve stage runs beside the input guards",
    )
    details = {"stages": {k: list(v) for k, v in scores.stages.items()}}
    return SuiteResult(_rounded(metrics), details, unavailable, notes)


SUITE_FUNCTIONS: dict[str, Callable[[SharedWork], SuiteResult]] = {
    "retrieval": retrieval_suite,
    "guards": guards_suite,
    "router": router_suite,
    "answers": answers_suite,
    "latency": latency_suite,
}
# The suites that read the retrieval set: its questions, and its documents ingested (answers
# and latency ask the pipeline its questions over them).
NEEDS_RETRIEVAL_SET = frozenset({"retrieval", "answers", "latency"})
