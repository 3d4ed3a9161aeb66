"""The metrics JSON of an evaluation run: its schema version, the documented dotted keys, and
for each key which direction is better and how far it may move before the gate calls it a
regression.

A run file (`metrics.json`) is one JSON object:

    schema           "guardrag-eval"
    schema_version   SCHEMA_VERSION (bumped when a key changes meaning or is removed)
    run              started_at / finished_at (ISO 8601, UTC), seconds, suites asked for,
                     limit and answers_limit, data directory, guardrag git commit, host
    settings         the Settings object used (secrets removed), including its profile
    models           each model the run used or looked for: name, path, whether on disk
    suites           per suite: status (ran | skipped | unavailable | failed), seconds, notes
    metrics          {dotted key: number}; only measured values: a part that could not run
                     leaves its keys out and says why under `unavailable`, never a zero
    unavailable      {dotted prefix: reason}, e.g. "guards.llama_guard": "... not on disk"
    details          curves and tables for the report (ROC points, sweeps, confusion matrix);
                     informative, not part of the stable key set

Keys (`{mode}` is dense | hybrid | hybrid_rerank | llamaindex; `{stage}` is a pipeline stage:
input_guards, retrieve, chunk_verdicts, rerank, chunk_pii, route, generate, output_guard, total):

    retrieval.{mode}.hit@{1,5,10}     gold document among the top k distinct documents
    retrieval.{mode}.recall@{1,5,10}  a top-k chunk is from the gold document and holds a gold
                                      answer string (chunk level; the answer is retrievable)
    retrieval.{mode}.mrr              mean reciprocal rank of the gold document
    retrieval.{mode}.ndcg@10          nDCG@10, binary relevance, one gold document
    retrieval.{mode}.p50_ms / p95_ms  query embedding + search
    retrieval.{mode}.questions
    guards.pii.{ENTITY}.precision / recall / f1 / gold / predicted   span overlap, same type
    guards.pii.micro.precision / recall / f1                         over all scored entities
    guards.injection.tpr / fpr        the detector's decision as configured (all layers)
    guards.injection.by_kind.{kind}.tpr (attack kinds) / .fpr (benign kinds)
    guards.injection.{layer}.auc      ROC AUC of one layer's score (rules, semantic, classifier)
    guards.injection.attacks / benign row counts
    guards.llama_guard.agreement / unsafe_precision / unsafe_recall / rows
    router.accuracy, router.macro_accuracy, router.class.{task}.accuracy, router.rows,
        router.defaulted (low-confidence default routes), router.p50_ms / p95_ms per call
    answers.exact / fuzzy / fuzzy_score / citation_precision / supported / groundedness /
        refusal_rate / blocked_rate / questions / repeating (share of answers that repeat a
        sentence of their own) / repeats_per_answer
    latency.{stage}.p50_ms / p95_ms, latency.first_token.p50_ms / p95_ms,
    latency.generate.tokens_per_s, latency.non_generation_share, latency.requests,
    latency.ingest.chunks_per_s / files_per_s, latency.llamaindex.ingest.chunks_per_s /
        files_per_s (LlamaIndex nodes are 1024 tokens, guardrag chunks ~200: compare files/s),
    latency.llamaindex.retrieve.p50_ms / p95_ms
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

SCHEMA = "guardrag-eval"
SCHEMA_VERSION = 1
# The suites, in the order a run takes them; each is the first part of its metric keys.
SUITES = ("retrieval", "guards", "router", "answers", "latency")
# Generation is the cost of the answers and latency suites: SmolLM2 on 2 CPU cores takes
# 2-7 s an answer, so they ask a spread sample of this many questions unless told otherwise.
DEFAULT_ANSWERS_LIMIT = 20

Direction = Literal["higher", "lower", "info"]


@dataclass(frozen=True)
class MetricRule:
    """How the gate treats keys matching `pattern` (fnmatch on the dotted key): the better
    direction, and the allowed move the wrong way: max(absolute, relative × baseline)."""

    pattern: str
    direction: Direction
    absolute: float = 0.0
    relative: float = 0.0
    meaning: str = ""

    def tolerance(self, baseline: float) -> float:
        return max(self.absolute, self.relative * abs(baseline))


# First match wins. Quality suites on fixed data with deterministic models move only when the
# code, data or a model changes, so their tolerances are tight; answers are a small sample of
# generated text, and timings on shared 2-core machines vary by 2-3x under load.
RULES: tuple[MetricRule, ...] = (
    MetricRule("*.questions", "info"),
    MetricRule("*.rows", "info"),
    MetricRule("*.requests", "info"),
    MetricRule("*.gold", "info"),
    MetricRule("*.predicted", "info"),
    MetricRule("guards.injection.attacks", "info"),
    MetricRule("guards.injection.benign", "info"),
    # The baseline's own numbers are shown beside ours, never gated.
    MetricRule("retrieval.llamaindex.*", "info"),
    MetricRule("latency.llamaindex.*", "info"),
    # Query latency of the quality suite is shown, not gated: on a shared 2-core machine under
    # load its p95 went from 8 to 800 ms with no code change. `make bench` measures speed as
    # same-run ratios, and the latency suite gates the request path loosely.
    MetricRule("retrieval.*_ms", "info"),
    MetricRule("retrieval.*", "higher", absolute=0.02, meaning="retrieval quality"),
    MetricRule("guards.pii.*", "higher", absolute=0.03, meaning="PII detection"),
    MetricRule("guards.injection.fpr", "lower", absolute=0.01),
    MetricRule("guards.injection.by_kind.*.fpr", "lower", absolute=0.03),
    MetricRule("guards.injection.*", "higher", absolute=0.02),
    MetricRule("guards.llama_guard.*", "higher", absolute=0.03),
    MetricRule("router.defaulted", "info"),
    MetricRule("router.*_ms", "lower", absolute=5.0, relative=2.0),
    MetricRule("router.*", "higher", absolute=0.03),
    MetricRule("answers.refusal_rate", "lower", absolute=0.1),
    MetricRule("answers.blocked_rate", "lower", absolute=0.05),
    MetricRule("answers.repeat*", "lower", absolute=0.1),
    MetricRule("answers.fuzzy_score", "higher", absolute=8.0),
    MetricRule("answers.*", "higher", absolute=0.1),
    MetricRule("latency.*_ms", "lower", absolute=50.0, relative=1.0),
    MetricRule("latency.*.tokens_per_s", "higher", relative=0.5),
    MetricRule("latency.*_per_s", "higher", relative=0.5),
    MetricRule("latency.non_generation_share", "lower", absolute=0.05),
    MetricRule("*", "info"),
)


def rule_for(key: str) -> MetricRule:
    return next(rule for rule in RULES if fnmatch.fnmatchcase(key, rule.pattern))


def suite_of(key: str) -> str:
    """The suite that measures a key: its first dotted part (`guards.pii...` → guards)."""
    return key.split(".", 1)[0]


def empty_run() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run": {},
        "settings": {},
        "models": {},
        "suites": {},
        "metrics": {},
        "unavailable": {},
        "details": {},
    }


def check_run(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A loaded run file, refused with its path when it is not one this code can read."""
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{where} is not a guardrag eval metrics file (no schema {SCHEMA!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{where} has schema_version {data.get('schema_version')}; this guardrag reads "
            f"{SCHEMA_VERSION}: re-run the baseline with this version"
        )
    if not all(isinstance(v, int | float) for v in data.get("metrics", {}).values()):
        raise ValueError(f"{where}: every value under `metrics` must be a number")
    return data
