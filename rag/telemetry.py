"""What each answered request tells operators: Prometheus metrics (per-stage latency, guard
outcomes, routes, cache results, tokens per model) and OpenTelemetry spans per stage.

Both are read off the finished Answer, so the pipeline itself knows nothing about either.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

from rag.schema import Answer

log = logging.getLogger(__name__)

# Stage latencies here range from 0.1 ms (rules) to a minute (a long answer on CPU).
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Telemetry(Protocol):
    def record(self, answer: Answer, user: str) -> None: ...


class PrometheusTelemetry:
    """Metrics in a registry of our own, served at /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.stage_seconds = Histogram(
            "guardrag_stage_seconds",
            "Time per pipeline stage",
            ["stage", "status"],
            registry=self.registry,
            buckets=_BUCKETS,
        )
        self.requests = Counter(
            "guardrag_requests_total",
            "Requests by final status",
            ["status"],
            registry=self.registry,
        )
        self.verdicts = Counter(
            "guardrag_guard_verdicts_total",
            "Guard verdicts after policy",
            ["guard", "outcome", "action"],
            registry=self.registry,
        )
        self.routes = Counter(
            "guardrag_routes_total", "Routes taken", ["task", "model"], registry=self.registry
        )
        self.cache = Counter(
            "guardrag_cache_total", "Answer cache lookups", ["result"], registry=self.registry
        )
        self.output_chars = Counter(
            "guardrag_output_chars_total",
            "Characters of answers shown",
            ["model"],
            registry=self.registry,
        )
        # Tokens as the model counted them (what capacity and cost are measured in); a
        # request whose generator reported no counts (a cache hit, a fan-out) adds none.
        self.prompt_tokens = Counter(
            "guardrag_prompt_tokens_total",
            "Prompt tokens sent to each model",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "guardrag_completion_tokens_total",
            "Tokens each model generated",
            ["model"],
            registry=self.registry,
        )
        # What the API's admission sees: requests holding one of api.max_concurrent places,
        # and those turned away (by reason) before any work. An autoscaler or an operator
        # reads load here; a 503 that spends nothing shows up nowhere else.
        self.api_in_progress = Gauge(
            "guardrag_api_requests_in_progress",
            "API requests holding a place (api.max_concurrent)",
            registry=self.registry,
        )
        self.api_refused = Counter(
            "guardrag_api_refused_total",
            "API requests turned away before any work",
            ["reason"],
            registry=self.registry,
        )
        self.first_token = Histogram(
            "guardrag_first_token_seconds",
            "Time from question to the first answer text",
            registry=self.registry,
            buckets=_BUCKETS,
        )

    def record(self, answer: Answer, user: str) -> None:
        self.requests.labels(answer.status).inc()
        for stage in answer.stages:
            self.stage_seconds.labels(stage.name, stage.status).observe(stage.ms / 1000)
            if stage.name == "cache":
                result = "skipped" if stage.status == "skipped" else stage.detail.split(":")[0]
                self.cache.labels(result).inc()  # hit, miss or skipped
        for verdict in answer.verdicts:
            self.verdicts.labels(verdict.guard, verdict.outcome, verdict.action).inc()
        if answer.route is not None:
            self.routes.labels(answer.route.task, answer.route.model).inc()
            self.output_chars.labels(answer.route.model).inc(len(answer.text))
            self._count_tokens(answer, answer.route.model)
        if answer.first_token_ms is not None:
            self.first_token.observe(answer.first_token_ms / 1000)

    def _count_tokens(self, answer: Answer, model: str) -> None:
        if answer.prompt_tokens is not None:
            self.prompt_tokens.labels(model).inc(answer.prompt_tokens)
        if answer.completion_tokens is not None:
            self.completion_tokens.labels(model).inc(answer.completion_tokens)


class OpenTelemetrySpans:
    """One span per request with a child span per stage, timed from the stage reports."""

    def __init__(
        self,
        exporter: str,
        endpoint: str | None,
        service_name: str,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        """`exporter`: `otlp` or `console`; an explicit `span_exporter` (e.g. the SDK's
        in-memory one) takes their place."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if span_exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        elif exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            otlp = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
            provider.add_span_processor(BatchSpanProcessor(otlp))
        else:
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        self.provider = provider
        self.tracer = provider.get_tracer("guardrag")

    def record(self, answer: Answer, user: str) -> None:
        end_ns = time.time_ns()
        total_ms = answer.timings_ms.get("total", 0.0)
        start_ns = end_ns - int(total_ms * 1e6)
        root = self.tracer.start_span(
            "guardrag.request",
            start_time=start_ns,
            attributes={
                "guardrag.request_id": answer.request_id,
                "guardrag.status": answer.status,
                "guardrag.route.model": answer.route.model if answer.route else "",
            },
        )
        from opentelemetry import trace

        context = trace.set_span_in_context(root)
        for stage in answer.stages:
            if stage.name == "total":
                continue
            stage_start = start_ns + int(stage.start_ms * 1e6)
            span = self.tracer.start_span(
                f"guardrag.{stage.name}",
                context=context,
                start_time=stage_start,
                attributes={"guardrag.status": stage.status},
            )
            span.end(end_time=stage_start + int(stage.ms * 1e6))
        root.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()


class AllTelemetry:
    """Every configured sink; one that fails is logged, never fails the request."""

    def __init__(self, sinks: list[Telemetry]) -> None:
        self.sinks = sinks

    def record(self, answer: Answer, user: str) -> None:
        for sink in self.sinks:
            try:
                sink.record(answer, user)
            except Exception:  # telemetry must never break an answer
                log.exception("telemetry sink %s failed", type(sink).__name__)
