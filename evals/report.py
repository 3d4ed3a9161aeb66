"""The run's three files: metrics.json (the schema in evals/metrics.py), one self-contained
report.html (plots inline as base64 PNG, no external requests) and a short summary.md."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evals.gate import GateResult

RETRIEVAL_COLUMNS = ("hit@1", "hit@5", "hit@10", "recall@5", "mrr", "ndcg@10", "p50_ms", "p95_ms")
RETRIEVAL_MODES = ("dense", "hybrid", "hybrid_rerank", "llamaindex")
STAGES = (
    "input_guards",
    "retrieve",
    "chunk_verdicts",
    "rerank",
    "chunk_pii",
    "route",
    "generate",
    "output_guard",
    "total",
)

Table = tuple[list[str], list[list[str]]]


COUNT_KEYS = (
    "questions",
    "rows",
    "requests",
    "gold",
    "predicted",
    "attacks",
    "benign",
    "defaulted",
)


def _fmt(value: float | None, key: str = "") -> str:
    if value is None:
        return "—"
    if key.rsplit(".", 1)[-1] in COUNT_KEYS:
        return str(int(value))
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


# ---------------------------------------------------------------- tables (shared by both formats)


def retrieval_table(m: dict[str, float]) -> Table | None:
    modes = [mode for mode in RETRIEVAL_MODES if f"retrieval.{mode}.hit@1" in m]
    if not modes:
        return None
    header = ["mode", *RETRIEVAL_COLUMNS]
    names = {"llamaindex": "stock LlamaIndex (same embedder, files)"}
    rows = [
        [names.get(mode, mode), *(_fmt(m.get(f"retrieval.{mode}.{c}")) for c in RETRIEVAL_COLUMNS)]
        for mode in modes
    ]
    return header, rows


def headline_table(m: dict[str, float]) -> Table:
    """The figures a reader looks at first, where measured."""
    wanted = [
        ("retrieval: hybrid hit@5", "retrieval.hybrid.hit@5"),
        ("retrieval: hybrid MRR", "retrieval.hybrid.mrr"),
        ("retrieval: stock LlamaIndex MRR", "retrieval.llamaindex.mrr"),
        ("PII micro precision", "guards.pii.micro.precision"),
        ("PII micro recall", "guards.pii.micro.recall"),
        ("injection TPR (attacks blocked)", "guards.injection.tpr"),
        ("injection FPR (benign blocked)", "guards.injection.fpr"),
        ("injection rules ROC AUC", "guards.injection.rules.auc"),
        ("Llama Guard agreement", "guards.llama_guard.agreement"),
        ("router accuracy", "router.accuracy"),
        ("answers: gold answer, exact", "answers.exact"),
        ("answers: gold answer, fuzzy", "answers.fuzzy"),
        ("answers: citation precision", "answers.citation_precision"),
        ("answers: groundedness (sentences)", "answers.groundedness"),
        ("answers: refusal rate", "answers.refusal_rate"),
        ("answers: repeating a sentence", "answers.repeating"),
        ("latency: total p50 ms", "latency.total.p50_ms"),
        ("latency: total p95 ms", "latency.total.p95_ms"),
        ("latency: first token p50 ms", "latency.first_token.p50_ms"),
        ("latency: tokens/s", "latency.generate.tokens_per_s"),
        ("latency: share not generation", "latency.non_generation_share"),
        ("latency: retrieve stage p50 ms", "latency.retrieve.p50_ms"),
        ("latency: stock LlamaIndex retrieve p50 ms", "latency.llamaindex.retrieve.p50_ms"),
        ("ingest files/s", "latency.ingest.files_per_s"),
        ("ingest chunks/s", "latency.ingest.chunks_per_s"),
        ("stock LlamaIndex ingest files/s", "latency.llamaindex.ingest.files_per_s"),
    ]
    return ["measure", "value", "key"], [
        [label, _fmt(m[key], key), key] for label, key in wanted if key in m
    ]


def llamaindex_table(m: dict[str, float]) -> Table | None:
    """guardrag beside stock LlamaIndex, measured in this run on the same files and questions
    with the same embedder: how much better or faster, as a ratio."""
    pairs = [
        ("hit@1", "retrieval.hybrid.hit@1", "retrieval.llamaindex.hit@1", "higher"),
        ("hit@5", "retrieval.hybrid.hit@5", "retrieval.llamaindex.hit@5", "higher"),
        (
            "recall@5 (answer chunk)",
            "retrieval.hybrid.recall@5",
            "retrieval.llamaindex.recall@5",
            "higher",
        ),
        ("MRR", "retrieval.hybrid.mrr", "retrieval.llamaindex.mrr", "higher"),
        ("nDCG@10", "retrieval.hybrid.ndcg@10", "retrieval.llamaindex.ndcg@10", "higher"),
        (
            "query p50 ms (embed + search)",
            "retrieval.hybrid.p50_ms",
            "retrieval.llamaindex.p50_ms",
            "lower",
        ),
        (
            "query p95 ms (embed + search)",
            "retrieval.hybrid.p95_ms",
            "retrieval.llamaindex.p95_ms",
            "lower",
        ),
        # Files/s compares like with like; chunk counts differ (LlamaIndex cuts 1024-token
        # nodes, guardrag the embedder's 256-token window).
        (
            "ingest files/s",
            "latency.ingest.files_per_s",
            "latency.llamaindex.ingest.files_per_s",
            "higher",
        ),
        (
            "ingest chunks/s",
            "latency.ingest.chunks_per_s",
            "latency.llamaindex.ingest.chunks_per_s",
            "higher",
        ),
    ]
    rows = []
    for label, ours, theirs, better in pairs:
        if ours in m and theirs in m:
            ratio = m[ours] / m[theirs] if m[theirs] else float("nan")
            rows.append([label, _fmt(m[ours]), _fmt(m[theirs]), f"{ratio:.2f}×", better])
    header = ["measure", "guardrag (hybrid)", "stock LlamaIndex", "ratio", "better is"]
    return (header, rows) if rows else None


def latency_table(m: dict[str, float]) -> Table | None:
    rows = [
        [stage, _fmt(m.get(f"latency.{stage}.p50_ms")), _fmt(m.get(f"latency.{stage}.p95_ms"))]
        for stage in (*STAGES, "first_token")
        if f"latency.{stage}.p50_ms" in m
    ]
    return (["stage", "p50 ms", "p95 ms"], rows) if rows else None


def suite_table(record: dict[str, Any]) -> Table:
    rows = []
    for name, suite in record["suites"].items():
        why = suite.get("error", "") or ", ".join(
            k for k in record["unavailable"] if k.split(".")[0] == name
        )
        rows.append([name, suite["status"], f"{suite['seconds']:.1f}", why])
    return ["suite", "status", "seconds", "not measured (why: in its section)"], rows


def gate_rows(gate: GateResult) -> Table:
    shown = [r for r in gate.rows if r.status in ("regressed", "missing", "better")]
    return ["metric", "baseline", "this run", "tolerance", "status"], [
        [r.key, _fmt(r.baseline), _fmt(r.current), f"±{r.tolerance:.3g}", r.status] for r in shown
    ]


# ---------------------------------------------------------------- Markdown


def _markdown_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(record: dict[str, Any], gate: GateResult | None = None) -> str:
    m, run = record["metrics"], record["run"]
    parts = [
        f"# guardrag eval, {run['started_at']}",
        f"Profile `{record['settings'].get('profile')}`, commit `{run.get('git_commit')}`, "
        f"data `{run['data']}`, limit {run['limit']}, answers limit {run['answers_limit']}; "
        f"{run.get('seconds', 0):.0f} s on {run['host']['cpus']} cores.",
        _markdown_table(suite_table(record)),
        _markdown_table(headline_table(m)),
    ]
    retrieval = retrieval_table(m)
    if retrieval:
        parts += ["## Retrieval", _markdown_table(retrieval)]
    beside = llamaindex_table(m)
    if beside:
        parts += ["## Beside stock LlamaIndex (same run)", _markdown_table(beside)]
    latency = latency_table(m)
    if latency:
        parts += ["## Latency per stage", _markdown_table(latency)]
    if gate is not None:
        verdict = "passed" if gate.passed else f"FAILED ({len(gate.failed)} metric(s))"
        parts += [f"## Gate: {verdict}", *[f"- {w}" for w in gate.warnings]]
        if gate_rows(gate)[1]:
            parts.append(_markdown_table(gate_rows(gate)))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (6.0, 3.6)) -> str:
    """A matplotlib figure as a data: URI (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=size, dpi=100)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_retrieval_by_k(details: dict[str, Any]) -> str:
    def draw(ax: Any) -> None:
        ks = details["ks"]
        for mode, values in details["by_k"].items():
            style = "--" if mode == "llamaindex" else "-"
            ax.plot(ks, values["hit"], style, marker="o", label=f"{mode} hit@k")
            ax.plot(ks, values["recall"], style, marker="x", alpha=0.6, label=f"{mode} recall@k")
        ax.set_xticks(ks)
        ax.set_xlabel("k")
        ax.set_ylabel("share of questions")
        ax.set_title("Retrieval by k (hit: document; recall: answer-bearing chunk)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    return _png(draw)


def plot_roc(layers: Sequence[dict[str, Any]], decision: tuple[float, float] | None) -> str:
    def draw(ax: Any) -> None:
        for layer in layers:
            auc = layer["roc"]["auc"]
            ax.plot(
                layer["roc"]["fpr"],
                layer["roc"]["tpr"],
                drawstyle="steps-post",
                label=f"{layer['layer']} (AUC {auc:.3f})",
            )
        if decision is not None:
            ax.plot([decision[1]], [decision[0]], "ro", label="detector as configured")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false-positive rate (benign flagged)")
        ax.set_ylabel("true-positive rate (attacks flagged)")
        ax.set_title("Injection ROC per layer")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    return _png(draw, (5.0, 4.2))


def plot_sweep(layers: Sequence[dict[str, Any]]) -> str:
    def draw(ax: Any) -> None:
        for layer in layers:
            xs = [p["threshold"] for p in layer["sweep"]]
            ax.plot(
                xs, [p["tpr"] for p in layer["sweep"]], marker=".", label=f"{layer['layer']} TPR"
            )
            ax.plot(
                xs,
                [p["fpr"] for p in layer["sweep"]],
                "--",
                marker=".",
                label=f"{layer['layer']} FPR",
            )
            ax.axvline(layer["threshold"], color="grey", linestyle=":")
        ax.set_xlabel("threshold (dotted: the configured one)")
        ax.set_ylabel("rate")
        ax.set_title("Injection threshold sweep")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    return _png(draw)


def plot_confusion(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    def draw(ax: Any) -> None:
        ax.imshow(matrix, cmap="Blues")
        darkest = max((max(row) for row in matrix), default=0)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                colour = "white" if count > darkest / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=9, color=colour)
        ax.set_xlabel("routed task")
        ax.set_ylabel("labelled task")
        ax.set_title("Router confusion matrix")

    return _png(draw, (5.2, 4.4))


def plot_latency(m: dict[str, float]) -> str:
    stages = [s for s in STAGES if f"latency.{s}.p50_ms" in m]
    bars = [(s, m[f"latency.{s}.p50_ms"], m[f"latency.{s}.p95_ms"]) for s in stages]
    if "latency.llamaindex.retrieve.p50_ms" in m:
        bars.append(
            (
                "LlamaIndex retrieve",
                m["latency.llamaindex.retrieve.p50_ms"],
                m["latency.llamaindex.retrieve.p95_ms"],
            )
        )

    def draw(ax: Any) -> None:
        names = [b[0] for b in bars]
        ax.barh(names, [b[2] for b in bars], color="#c7d7ee", label="p95")
        ax.barh(names, [b[1] for b in bars], color="#3b6fb6", label="p50")
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_title("Latency by stage (retrieve runs beside the input guards)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")

    return _png(draw, (6.5, 3.8))


def plot_pii(pii: dict[str, dict[str, float]]) -> str:
    entities = [e for e in pii if e != "micro" and pii[e].get("gold")]

    def draw(ax: Any) -> None:
        xs = range(len(entities))
        ax.bar(
            [x - 0.2 for x in xs], [pii[e]["precision"] for e in entities], 0.4, label="precision"
        )
        ax.bar([x + 0.2 for x in xs], [pii[e]["recall"] for e in entities], 0.4, label="recall")
        ax.set_xticks(list(xs), entities, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title("PII per entity (span overlap)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")

    return _png(draw)


def plots(record: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Per suite: (caption, data URI) of each plot its data allows."""
    m, details = record["metrics"], record["details"]
    out: dict[str, list[tuple[str, str]]] = {}
    if details.get("retrieval", {}).get("by_k"):
        out["retrieval"] = [("Retrieval by k", plot_retrieval_by_k(details["retrieval"]))]
    guards = details.get("guards", {})
    if guards.get("injection", {}).get("layers"):
        layers = guards["injection"]["layers"]
        point = (
            (m["guards.injection.tpr"], m["guards.injection.fpr"])
            if "guards.injection.tpr" in m
            else None
        )
        out["guards"] = [("Injection ROC", plot_roc(layers, point))]
        out["guards"].append(("Injection threshold sweep", plot_sweep(layers)))
    if guards.get("pii"):
        out.setdefault("guards", []).append(("PII per entity", plot_pii(guards["pii"])))
    router = details.get("router", {})
    if router.get("confusion"):
        out["router"] = [
            ("Confusion matrix", plot_confusion(router["labels"], router["confusion"]))
        ]
    if any(k.startswith("latency.") and k.endswith("p50_ms") for k in m):
        out["latency"] = [("Latency breakdown", plot_latency(m))]
    return out


# ---------------------------------------------------------------- HTML

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d6dae3;padding:3px 8px}
th{background:#f1f3f8;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.unavailable{background:#fff6e0;border:1px solid #e8c66a;padding:6px 10px;margin:6px 0}
.failed,.regressed,.missing{color:#b00020;font-weight:600}.better{color:#167a2c}
figure{display:inline-block;margin:6px}figcaption{font-size:12px;color:#555}
.note{color:#444;font-size:13px}code{background:#f4f4f6;padding:0 3px}
"""


def _html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)

    def cell(value: str) -> str:
        numeric = value.replace(".", "", 1).replace("-", "", 1).isdigit()
        css = ' class="n"' if numeric else f' class="{html.escape(value)}"'
        return f"<td{css}>{html.escape(value)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(record: dict[str, Any], gate: GateResult | None = None) -> str:
    m, run = record["metrics"], record["run"]
    figures = plots(record)
    title = f"guardrag eval, {run['started_at']}"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        "<p class='note'>"
        + html.escape(
            f"profile {record['settings'].get('profile')} · commit {run.get('git_commit')} · "
            f"data {run['data']} · limit {run['limit']} · answers limit "
            f"{run['answers_limit']} · {run.get('seconds', 0):.0f} s · load "
            f"{run['host'].get('load_at_start')} → {run['host'].get('load_at_end')} on "
            f"{run['host']['cpus']} cores"
        )
        + "</p>",
        _html_table(suite_table(record)),
    ]
    if gate is not None:
        verdict = "passed" if gate.passed else f"failed: {len(gate.failed)} metric(s)"
        css = "better" if gate.passed else "regressed"
        parts.append(f"<h2>Regression gate: <span class='{css}'>{verdict}</span></h2>")
        parts += [f"<p class='note'>{html.escape(w)}</p>" for w in gate.warnings]
        if gate_rows(gate)[1]:
            parts.append(_html_table(gate_rows(gate)))
    parts += ["<h2>Summary</h2>", _html_table(headline_table(m))]
    for suite in record["suites"]:
        parts.append(f"<h2>{html.escape(suite)}</h2>")
        for note in record["suites"][suite].get("notes", []):
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        for key, why in record["unavailable"].items():
            if key.split(".")[0] == suite:
                parts.append(
                    f"<div class='unavailable'><b>{html.escape(key)}: not measured.</b> "
                    f"{html.escape(why)}</div>"
                )
        if suite == "retrieval" and retrieval_table(m):
            parts.append(_html_table(retrieval_table(m)))  # type: ignore[arg-type]
        if suite == "latency" and latency_table(m):
            parts.append(_html_table(latency_table(m)))  # type: ignore[arg-type]
        if suite in ("retrieval", "latency") and llamaindex_table(m):
            parts.append("<h3>Beside stock LlamaIndex, this run</h3>")
            parts.append(_html_table(llamaindex_table(m)))  # type: ignore[arg-type]
        for caption, uri in figures.get(suite, []):
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='{uri}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        keys = sorted(k for k in m if k.split(".")[0] == suite)
        if keys:
            # Short lists are the section's only table: shown open.
            opened = " open" if len(keys) <= 16 else ""
            parts.append(
                f"<details{opened}><summary>all {len(keys)} {html.escape(suite)} metrics</summary>"
                + _html_table((["key", "value"], [[k, _fmt(m[k], k)] for k in keys]))
                + "</details>"
            )
        examples = record["details"].get(suite, {}).get("examples")
        if examples:
            parts.append(
                "<details><summary>example answers</summary>"
                + _html_table(
                    (
                        ["question", "status", "gold in answer", "answer"],
                        [[e["id"], e["status"], str(e["exact"]), e["text"]] for e in examples],
                    )
                )
                + "</details>"
            )
    parts.append(
        "<h2>Settings and models</h2><details><summary>models</summary><pre>"
        + html.escape(json.dumps(record["models"], indent=1))
        + "</pre></details><details><summary>settings</summary><pre>"
        + html.escape(json.dumps(record["settings"], indent=1))
        + "</pre></details></body></html>"
    )
    return "\n".join(parts)


def write_reports(
    record: dict[str, Any], out: Path, gate: GateResult | None = None
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "html": out / "report.html",
        "markdown": out / "summary.md",
    }
    paths["metrics"].write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    paths["html"].write_text(report_html(record, gate), encoding="utf-8")
    paths["markdown"].write_text(summary_markdown(record, gate), encoding="utf-8")
    return paths
