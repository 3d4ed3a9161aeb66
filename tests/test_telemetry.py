"""Metrics and traces read off a finished answer: Prometheus counters and one OpenTelemetry
span per stage, nested under the request's span."""

from __future__ import annotations

import dataclasses

from prometheus_client import generate_latest

from guardrails.verdict import clean, flagged
from rag.schema import Answer, Route, StageReport
from rag.telemetry import OpenTelemetrySpans, PrometheusTelemetry

ANSWER = Answer(
    request_id="r1",
    question="q",
    text="Fourteen characters [1].",
    status="answered",
    verdicts=(clean("pii"), flagged("injection", 0.9, ("override",), "rule"), clean("llama_guard")),
    route=Route("document_qa", "smollm2", 0.8, "similarity"),
    stages=(
        StageReport("input_guards", "ran", 9.0, start_ms=0.5),
        StageReport("retrieve", "ran", 12.0, start_ms=0.4),
        StageReport("cache", "ran", 0.1, "miss", start_ms=13.0),
        StageReport("generate", "ran", 900.0, start_ms=14.0),
        StageReport("total", "ran", 930.0),
    ),
    first_token_ms=120.0,
)


def test_prometheus_counts_stages_verdicts_routes_and_cache_results() -> None:
    metrics = PrometheusTelemetry()
    metrics.record(ANSWER, "ann")
    text = generate_latest(metrics.registry).decode()
    assert 'guardrag_stage_seconds_count{stage="generate",status="ran"} 1.0' in text
    # Counted as the verdict stands after policy: the flag ANSWER carries has no action yet
    # (allow), so no "block" series exists; each verdict is one count under its labels.
    assert (
        'guardrag_guard_verdicts_total{action="allow",guard="injection",outcome="block"} 1.0'
        in text
    )
    assert 'guardrag_guard_verdicts_total{action="allow",guard="pii",outcome="allow"} 1.0' in text
    assert 'guardrag_guard_verdicts_total{action="block",guard="injection"' not in text
    assert 'guardrag_routes_total{model="smollm2",task="document_qa"} 1.0' in text
    assert 'guardrag_cache_total{result="miss"} 1.0' in text
    assert 'guardrag_requests_total{status="answered"} 1.0' in text


def test_each_stage_becomes_a_child_span_of_the_request() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    spans = OpenTelemetrySpans("none", None, "guardrag-test", span_exporter=exported)
    spans.record(ANSWER, "ann")
    by_name = {span.name: span for span in exported.get_finished_spans()}
    assert set(by_name) == {
        "guardrag.request",
        "guardrag.input_guards",
        "guardrag.retrieve",
        "guardrag.cache",
        "guardrag.generate",
    }
    root = by_name["guardrag.request"]
    assert root.attributes is not None and root.attributes["guardrag.status"] == "answered"
    for name in ("guardrag.retrieve", "guardrag.generate"):
        child = by_name[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id
    generate = by_name["guardrag.generate"]
    assert generate.end_time is not None and generate.start_time is not None
    assert (generate.end_time - generate.start_time) == 900_000_000


def test_an_answer_without_token_counts_adds_no_tokens() -> None:
    metrics = PrometheusTelemetry()
    metrics.record(ANSWER, "ann")
    text = generate_latest(metrics.registry).decode()
    assert "guardrag_prompt_tokens_total{" not in text
    assert "guardrag_completion_tokens_total{" not in text
    assert "# TYPE guardrag_prompt_tokens_total counter" in text


def test_prometheus_counts_prompt_and_completion_tokens_per_model() -> None:
    metrics = PrometheusTelemetry()
    counted = dataclasses.replace(ANSWER, prompt_tokens=412, completion_tokens=37)
    metrics.record(counted, "ann")
    metrics.record(counted, "bob")
    other = dataclasses.replace(counted, route=Route("code", "coder", 0.9, "similarity"))
    metrics.record(other, "ann")
    text = generate_latest(metrics.registry).decode()
    assert 'guardrag_prompt_tokens_total{model="smollm2"} 824.0' in text
    assert 'guardrag_completion_tokens_total{model="smollm2"} 74.0' in text
    assert 'guardrag_prompt_tokens_total{model="coder"} 412.0' in text
    assert 'guardrag_completion_tokens_total{model="coder"} 37.0' in text


def test_prometheus_counts_each_blocked_verdict_under_the_action_policy_took() -> None:
    blocked = dataclasses.replace(ANSWER.verdicts[1], action="block", policy="injection.on_flag")
    refused = dataclasses.replace(
        ANSWER, status="refused", verdicts=(ANSWER.verdicts[0], blocked), text="Refused."
    )
    metrics = PrometheusTelemetry()
    metrics.record(refused, "ann")
    metrics.record(refused, "bob")
    text = generate_latest(metrics.registry).decode()
    assert (
        'guardrag_guard_verdicts_total{action="block",guard="injection",outcome="block"} 2.0'
        in text
    )
    assert 'guardrag_guard_verdicts_total{action="allow",guard="pii",outcome="allow"} 2.0' in text
    assert 'guardrag_requests_total{status="refused"} 2.0' in text
