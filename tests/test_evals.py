"""Offline evaluation: metric formulas on hand-computed cases, the CI regression gate run for
real (retrieval + guards on a subset of ../shared/eval-data against evals/baselines/ci.json),
the gate failing when a metric drops, the schema's keys, and a self-contained HTML report."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evals.answers import (
    JudgedAnswer,
    answer_scores,
    ask_all,
    declines,
    judge,
    latency_scores,
)
from evals.gate import compare_metric, compare_runs
from evals.metrics import SCHEMA, SCHEMA_VERSION, rule_for
from evals.report import report_html
from evals.retrieval import QAQuestion, rank_documents
from evals.run import parse_suites
from evals.scoring import (
    contains_answer,
    fuzzy_answer_score,
    hit_at,
    mean_reciprocal_rank,
    ndcg_at,
    precision_recall,
    roc,
    sentences,
    sweep,
)
from evals.suites import spread
from rag.compose import build_embedder
from rag.pipeline import Pipeline
from tests.conftest import EVAL_DATA, ROOT

CI_BASELINE = ROOT / "evals" / "baselines" / "ci.json"
# The CI gate's subset: every document is ingested, 60 rows of each labelled set are asked.
CI_LIMIT = "60"


# ---------------------------------------------------------------- formulas, by hand


def test_ranking_metrics_match_hand_computed_values() -> None:
    ranks = [1, 3, None, 2]
    assert hit_at(ranks, 1) == 0.25
    assert hit_at(ranks, 3) == 0.75
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    # nDCG with one relevant item: 1/log2(rank + 1); rank 3 → 0.5, rank 2 → 0.6309.
    assert ndcg_at(ranks, 10) == pytest.approx((1 + 0.5 + 0 + 1 / math.log2(3)) / 4)
    assert ndcg_at(ranks, 2) == pytest.approx((1 + 0 + 0 + 1 / math.log2(3)) / 4)


def test_gold_document_and_answer_chunk_are_ranked_separately() -> None:
    q = QAQuestion("q1", "capital?", doc="france.md", answers=("Paris",))
    ranked = rank_documents(
        ["italy.md", "france.md", "italy.md", "france.md"],
        ["Rome is the capital.", "France is in Europe.", "Milan.", "Its capital is Paris."],
        q,
    )
    # Documents in order: italy, france → the gold document is second; the chunk holding
    # "Paris" from france.md is the fourth chunk.
    assert (ranked.doc_rank, ranked.answer_rank) == (2, 4)


def test_roc_auc_and_sweep_match_hand_computed_values() -> None:
    scores = [0.9, 0.6, 0.0, 0.0, 0.7]
    attack = [True, True, True, False, False]
    # Of 6 attack/benign pairs the attack outscores 3, ties 1 (counts half): AUC 3.5 / 6.
    assert roc(scores, attack).auc == pytest.approx(3.5 / 6)
    (_, at_half), (_, at_high) = sweep(scores, attack, [0.5, 0.8])
    assert (at_half.tpr, at_half.fpr) == pytest.approx((2 / 3, 1 / 2))
    assert (at_high.tpr, at_high.fpr) == pytest.approx((1 / 3, 0.0))
    assert math.isnan(roc([0.1, 0.2], [True, True]).auc)


def test_precision_recall_f1() -> None:
    pr = precision_recall(true_pos=3, predicted=4, gold_found=3, gold=6)
    assert (pr.precision, pr.recall) == (0.75, 0.5)
    assert pr.f1 == pytest.approx(0.6)
    assert precision_recall(0, 0, 0, 0).f1 == 0.0


def test_answer_matching_normalises_and_respects_word_boundaries() -> None:
    assert contains_answer("It opened in 1889, in Paris.", ["1889"])
    assert not contains_answer("It cost 18890 francs.", ["1889"])
    assert contains_answer("He lived in a series of New York hotels.", ["the New York hotels"])
    assert fuzzy_answer_score("Tesla died on 7 January, 1943", ["7 January 1943"]) >= 90
    assert fuzzy_answer_score("Tesla was an inventor", ["7 January 1943"]) < 60
    assert declines("The passages do not mention the year.")
    assert not declines("The minimum password length is 14 characters.")
    assert sentences("First claim here. Second claim, longer.\n[1]") == [
        "First claim here.",
        "Second claim, longer.",
    ]


def test_near_copies_of_training_texts_are_found_and_nothing_else() -> None:
    from evals.guards import head_training_texts, near_copies

    training = head_training_texts()
    jailbreak = next(t for t in training if "DAN" in t and len(t) > 1500)
    reposted = jailbreak.replace("DAN", "KEVIN").upper() + " Now tell me how to pick a lock."
    short = next(t for t in training if 20 < len(t) < 60)
    texts = [
        reposted,
        "  " + short.lower() + " ",
        "How many days of annual leave do full-time staff get, and who approves carry-over?",
        short + " Also, what is the capital of France and why?",
        " ".join(jailbreak.split()[::2]),  # every other word: shares phrasing, not a copy
    ]
    assert near_copies(texts, training) == [0, 1]


def test_spread_sample_covers_the_whole_file() -> None:
    rows = list(range(100))
    assert spread(rows, 4) == [0, 25, 50, 75]
    assert spread(rows, None) == rows


def test_suite_names_parse_and_unknown_ones_are_refused() -> None:
    assert parse_suites(["guards,retrieval"]) == ("retrieval", "guards")
    assert parse_suites(["all"])[0] == "retrieval"
    with pytest.raises(ValueError, match="unknown suite"):
        parse_suites(["retreival"])


def test_gate_directions_and_tolerances() -> None:
    assert rule_for("retrieval.hybrid.hit@5").direction == "higher"
    assert rule_for("guards.injection.fpr").direction == "lower"
    assert rule_for("retrieval.llamaindex.mrr").direction == "info"
    assert compare_metric("retrieval.hybrid.mrr", 0.98, 0.97).status == "ok"
    assert compare_metric("retrieval.hybrid.mrr", 0.98, 0.90).status == "regressed"
    assert compare_metric("guards.injection.fpr", 0.02, 0.05).status == "regressed"
    assert compare_metric("guards.injection.fpr", 0.05, 0.02).status == "better"
    assert compare_metric("retrieval.hybrid.mrr", 0.98, None).status == "missing"


# ---------------------------------------------------------------- the CI gate, for real


def _eval(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "evals.cli", "--data", str(EVAL_DATA), "--out", str(tmp)]
    return subprocess.run(
        [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def ci_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    if not (EVAL_DATA / "retrieval_qa").is_dir():
        pytest.skip(f"{EVAL_DATA} is not beside this checkout")
    out = tmp_path_factory.mktemp("eval-ci")
    done = _eval(
        out,
        *("--suite", "retrieval,guards", "--limit", CI_LIMIT, "--no-llamaindex"),
        *("--baseline", str(CI_BASELINE)),
    )
    return out, done


@pytest.mark.slow
def test_ci_gate_passes_against_the_saved_baseline(
    ci_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, done = ci_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gate passed" in done.stdout
    record = json.loads((out / "metrics.json").read_text())
    assert record["gate"]["passed"] is True
    assert not record["gate"]["warnings"], record["gate"]["warnings"]


@pytest.mark.slow
def test_gate_fails_when_a_metric_drops(
    ci_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = ci_run
    record = json.loads((out / "metrics.json").read_text())
    # A baseline 0.2 better than what the code measures is this code having regressed.
    better = json.loads(json.dumps(record))
    better["metrics"]["guards.injection.tpr"] += 0.2
    better["metrics"]["guards.pii.micro.recall"] += 0.2
    baseline = tmp_path / "better.json"
    baseline.write_text(json.dumps(better))
    done = _eval(
        tmp_path / "out", "--suite", "guards", "--limit", CI_LIMIT, "--baseline", str(baseline)
    )
    assert done.returncode == 1, done.stdout[-3000:]
    assert "regression" in done.stdout
    assert "guards.injection.tpr" in done.stdout
    gated = json.loads((tmp_path / "out" / "metrics.json").read_text())["gate"]
    assert set(gated["failed"]) == {"guards.injection.tpr", "guards.pii.micro.recall"}
    # The same comparison without the doctored metrics passes: only they failed.
    assert compare_runs(gated_run(tmp_path / "out"), record).passed


def gated_run(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_metrics_json_has_the_documented_keys_and_says_what_it_could_not_measure(
    ci_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = ci_run
    record = json.loads((out / "metrics.json").read_text())
    assert (record["schema"], record["schema_version"]) == (SCHEMA, SCHEMA_VERSION)
    metrics = record["metrics"]
    for key in (
        "retrieval.hybrid.hit@1",
        "retrieval.hybrid.hit@5",
        "retrieval.hybrid.hit@10",
        "retrieval.dense.recall@5",
        "retrieval.hybrid.mrr",
        "retrieval.hybrid.ndcg@10",
        "retrieval.hybrid.p95_ms",
        "guards.injection.tpr",
        "guards.injection.fpr",
        "guards.injection.rules.auc",
        "guards.injection.near_copies_left_out",
        "guards.pii.micro.f1",
        "guards.pii.EMAIL_ADDRESS.recall",
    ):
        assert isinstance(metrics[key], float | int), key
    assert metrics["retrieval.hybrid.questions"] == int(CI_LIMIT)
    # Hybrid retrieval on this set finds the gold document in the top 5 for nearly all.
    assert metrics["retrieval.hybrid.hit@5"] >= 0.95
    assert any(k.startswith("guards.injection.by_kind.") for k in metrics)
    # No reranker or Llama Guard on disk here: named as unavailable, never scored as zero.
    for part in ("retrieval.hybrid_rerank", "guards.llama_guard"):
        if part in record["unavailable"]:
            assert not any(k.startswith(part + ".") for k in metrics)
    assert record["run"]["started_at"] and record["run"]["finished_at"]
    assert record["settings"]["profile"] == "local"
    assert any(m["role"] == "embedder" and m["on_disk"] for m in record["models"])


@pytest.mark.slow
def test_html_report_is_one_self_contained_file_with_inline_plots(
    ci_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = ci_run
    page = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    # Retrieval by k, the ROC, the threshold sweep, PII per entity.
    assert len(images) >= 4
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "<script" not in page and "<link" not in page
    assert "not measured" in page
    summary = (out / "summary.md").read_text()
    assert "| hybrid |" in summary


def test_report_renders_router_and_latency_sections_from_a_record() -> None:
    record: dict[str, Any] = {
        "run": {
            "started_at": "2026-01-01T00:00:00+00:00",
            "limit": None,
            "answers_limit": 2,
            "data": "d",
            "host": {"cpus": 2},
        },
        "settings": {"profile": "local"},
        "models": [],
        "suites": {
            "router": {"status": "ran", "seconds": 1.0},
            "latency": {"status": "ran", "seconds": 1.0},
        },
        "metrics": {
            "router.accuracy": 0.5,
            "latency.total.p50_ms": 3000.0,
            "latency.total.p95_ms": 5000.0,
            "latency.generate.p50_ms": 2800.0,
            "latency.generate.p95_ms": 4800.0,
        },
        "unavailable": {},
        "details": {"router": {"labels": ["a", "b"], "confusion": [[1, 1], [0, 2]]}},
    }
    page = report_html(record)
    assert page.count("data:image/png;base64,") == 2
    assert "Confusion matrix" in page and "Latency breakdown" in page


# ---------------------------------------------------------------- answers on the real pipeline


@pytest.mark.slow
async def test_answers_are_judged_and_timed_from_the_real_pipeline(
    pipeline: Pipeline, corpus_settings: Any
) -> None:
    questions = [
        QAQuestion(
            "pw", "What is the minimum password length?", "security-and-it.md", ("14 characters",)
        ),
        QAQuestion("leave", "How many days a week can I work remotely?", "remote-work-policy.md"),
    ]
    answers = await ask_all(pipeline, questions)
    judged = [
        judge(a, q, build_embedder(corpus_settings), None)
        for a, q in zip(answers, questions, strict=True)
    ]
    first = judged[0]
    assert first.status == "answered"
    # The password passage is retrieved and holds the gold answer: at least one supporting
    # citation (SmolLM2's wording varies, the retrieval does not).
    assert first.supporting >= 1
    assert first.sentences >= 1 and 0 <= first.grounded_sentences <= first.sentences
    scores = answer_scores(judged)
    assert 0.0 < scores.citation_precision <= 1.0
    timing = latency_scores(judged)
    assert {"input_guards", "retrieve", "generate", "total"} <= set(timing.stages)
    p50, p95 = timing.stages["total"]
    assert 0 < p50 <= p95
    assert timing.non_generation_share is not None and 0 < timing.non_generation_share < 1


def test_answer_scores_count_refusals_and_blocks() -> None:
    def judged(status: str, refused: bool, exact: bool) -> JudgedAnswer:
        return JudgedAnswer(
            "q", status, "", exact, 100.0 if exact else 0.0, 1, int(exact), 1, 1, refused, None
        )

    scores = answer_scores(
        [
            judged("answered", False, True),
            judged("answered", True, False),
            judged("blocked", True, False),
        ]
    )
    assert scores.exact == pytest.approx(1 / 3)
    assert scores.refusal_rate == pytest.approx(2 / 3)
    assert scores.blocked_rate == pytest.approx(1 / 3)
    assert scores.citation_precision == pytest.approx(1 / 2)


def _pytest_on(test_file: Path, ci: str) -> subprocess.CompletedProcess[str]:
    # tests/conftest.py loaded as a plugin, so its hook judges a file outside tests/.
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "-q", "-rs", str(test_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(test_file.parent), "CI": ci},
        check=False,
    )


def test_a_skip_in_ci_is_a_failure_and_a_listed_skip_elsewhere(tmp_path: Path) -> None:
    # The eval gate above skips without ../shared/eval-data: in CI that skip must be red.
    test_file = tmp_path / "test_gate_stand_in.py"
    test_file.write_text(
        "import pytest\n\n"
        "def test_needs_data():\n    pytest.skip('eval data is not beside this checkout')\n\n"
        "@pytest.mark.skipif(True, reason='kubectl is not on this machine')\n"
        "def test_needs_kubectl():\n    pass\n\n"
        "@pytest.mark.xfail(reason='a known gap', strict=True)\n"
        "def test_known_gap():\n    assert False\n\n"
        "def test_runs():\n    assert True\n"
    )
    in_ci = _pytest_on(test_file, "true")
    assert in_ci.returncode == 1, in_ci.stdout[-2000:]
    # The skip in the test body fails it; the skip decided at setup (a skipif) is an error.
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in in_ci.stdout, in_ci.stdout[-2000:]
    assert "skipped in CI" in in_ci.stdout and "kubectl is not on this machine" in in_ci.stdout
    locally = _pytest_on(test_file, "")
    assert locally.returncode == 0, locally.stdout[-2000:]
    assert "1 passed, 2 skipped, 1 xfailed" in locally.stdout, locally.stdout[-2000:]
    assert "SKIPPED" in locally.stdout and "eval data is not beside" in locally.stdout
