"""The Gradio chat: answers stream, with their sources, every guard's verdict and the route.

Document text and model output are shown as escaped text (or Markdown with images removed),
so a document holding `<script>` or an image URL carrying data never runs or loads anything.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from guardrails.verdict import Verdict
from rag.compose import build_pipeline, start_engines
from rag.pipeline import Conversation, Pipeline, QuestionError
from rag.schema import Answer, Final, Retraction, StageEvent, TextDelta
from rag.settings import Settings

_MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_CHIP_COLOURS = {
    "allow": "#1a7f37",
    "redact": "#9a6700",
    "warn": "#9a6700",
    "block": "#cf222e",
    "unavailable": "#6e7781",
}


def safe_markdown(text: str) -> str:
    """Model output as Markdown minus images: an image URL could carry data out of the page."""
    return _MARKDOWN_IMAGE.sub(lambda m: f"[image removed: {m.group(1)}]", text)


def verdict_chip(verdict: Verdict) -> str:
    if verdict.guard == "pii" and verdict.outcome != "unavailable":
        count = verdict.reason.split(" ", 1)[0] if verdict.flagged else "0"
        label = (
            f"PII: {count} pseudonymised"
            if verdict.action == "redact"
            else f"PII: {verdict.outcome}"
        )
    elif verdict.guard == "injection" and verdict.outcome != "unavailable":
        label = f"injection: {verdict.score:.2f} ({verdict.outcome})"
    elif verdict.guard == "llama_guard":
        label = {
            "allow": "Llama Guard: safe",
            "unavailable": f"Llama Guard: unavailable, {verdict.policy}",
        }.get(verdict.outcome, f"Llama Guard: unsafe {', '.join(verdict.categories)}")
    else:
        label = f"{verdict.guard}: {verdict.outcome}"
    colour = _CHIP_COLOURS.get(verdict.outcome, "#6e7781")
    style = (
        "display:inline-block;margin:2px;padding:2px 8px;border-radius:12px;"
        f"color:white;background:{colour};font-size:0.85em"
    )
    return (
        f'<span class="guard-chip" title="{html.escape(verdict.reason)}" style="{style}">'
        f"{html.escape(label)}</span>"
    )


def sources_html(answer: Answer) -> str:
    if not answer.citations:
        return "<p><em>No sources for this answer.</em></p>"
    blocks = []
    for c in answer.citations:
        blocks.append(
            f'<details class="source"><summary>[{c.number}] {html.escape(c.location)} '
            f"<small>(score {c.score:.3f})</small></summary>"
            f'<div style="white-space:pre-wrap;font-size:0.9em">{html.escape(c.text)}</div>'
            "</details>"
        )
    return "\n".join(blocks)


def details_markdown(answer: Answer) -> str:
    lines = []
    if answer.route:
        r = answer.route
        lines.append(
            f"**Route:** {r.task} → `{r.model}` (confidence {r.confidence:.2f}; {r.reason})"
        )
    if answer.first_token_ms is not None:
        lines.append(f"**First token:** {answer.first_token_ms:.0f} ms")
    lines.append("\n| stage | status | ms | detail |\n|---|---|---|---|")
    for s in answer.stages:
        detail = html.escape(s.detail).replace("|", "\\|")
        lines.append(f"| {s.name} | {s.status} | {s.ms:.1f} | {detail} |")
    return "\n".join(lines)


def build_chat(pipeline: Pipeline) -> gr.Blocks:
    async def respond(
        message: str, history: list[dict[str, Any]], conversation: Conversation | None
    ) -> AsyncIterator[tuple[Any, ...]]:
        conversation = conversation or Conversation()
        history = [
            *history,
            {"role": "user", "content": message},
            {"role": "assistant", "content": ""},
        ]
        shown = ""
        progress = ""
        try:
            async for event in pipeline.stream(message, conversation):
                if isinstance(event, TextDelta):
                    shown += event.text
                    history[-1] = {"role": "assistant", "content": safe_markdown(shown)}
                    yield history, gr.skip(), gr.skip(), gr.skip(), conversation
                elif isinstance(event, Retraction):
                    shown = ""
                    history[-1] = {
                        "role": "assistant",
                        "content": "_(answer retracted by the output guard)_",
                    }
                    yield history, gr.skip(), gr.skip(), gr.skip(), conversation
                elif isinstance(event, StageEvent):
                    progress += f"{event.report.name}: {event.report.status} · "
                    yield history, gr.skip(), gr.skip(), progress, conversation
                elif isinstance(event, Final):
                    answer = event.answer
                    text = (
                        answer.text
                        if answer.status == "answered"
                        else f"**{answer.status}:** {answer.text}"
                    )
                    history[-1] = {"role": "assistant", "content": safe_markdown(text)}
                    chips = "".join(verdict_chip(v) for v in answer.verdicts)
                    yield (
                        history,
                        sources_html(answer),
                        chips,
                        details_markdown(answer),
                        conversation,
                    )
        except QuestionError as exc:
            history[-1] = {"role": "assistant", "content": f"_{exc}_"}
            yield history, gr.skip(), gr.skip(), gr.skip(), conversation

    with gr.Blocks(title="guardrag") as chat:
        gr.Markdown("## guardrag: ask your documents")
        conversation = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="chat", height=520, sanitize_html=True)
                question = gr.Textbox(
                    placeholder="Ask about your documents…", show_label=False, autofocus=True
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary")
                    clear = gr.Button("New conversation")
            with gr.Column(scale=2):
                gr.Markdown("### Guards")
                chips = gr.HTML("<em>Verdicts appear here.</em>", elem_id="guard-chips")
                gr.Markdown("### Sources")
                sources = gr.HTML("<em>Sources appear here.</em>", elem_id="sources")
                with gr.Accordion("Route and timings", open=False):
                    details = gr.Markdown()

        outputs = [chatbot, sources, chips, details, conversation]
        for trigger in (question.submit, send.click):
            trigger(respond, [question, chatbot, conversation], outputs).then(
                lambda: "", None, question
            )
        clear.click(
            lambda: ([], None, "", "", ""), None, [chatbot, conversation, sources, chips, details]
        )
    return chat


def serve_chat(settings: Settings, host: str, port: int) -> None:
    pipeline = build_pipeline(settings)
    # Load the model before the page opens, so the first question does not wait for it.
    start_engines(pipeline)
    build_chat(pipeline).queue().launch(server_name=host, server_port=port, footer_links=[])
