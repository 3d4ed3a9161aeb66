"""What the chat page shows, as text it cannot be tricked by: model output rendered here from
Markdown to HTML, raw HTML escaped and images removed; document text escaped; verdicts as
chips."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from guardrails.verdict import Verdict
from rag.schema import Answer, StageReport

_CHIP_COLOURS = {
    "allow": "#1a7f37",
    "redact": "#9a6700",
    "warn": "#9a6700",
    "block": "#cf222e",
    "unavailable": "#6e7781",
}
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]{3,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}")

# A link needs a click, so links stay, but only to other sites or mail: a relative link would
# point at this server's own routes, and javascript:, data: and the like are never links.
_LINK_SCHEMES = ("http://", "https://", "mailto:")
# The HTML leaves as one line with no `!` and no backtick. Gradio's Chatbot parses messages
# as Markdown (marked) before it sanitises them: one line that starts with a block tag is one
# raw HTML block to it, passed on unchanged (the same DOM as with render_markdown=False,
# checked in Chromium on every form in tests/test_render.py). And whatever a Markdown parser
# makes of it, it finds no `![` to open an image with and no fence (marked hands a ```mermaid
# fence to Mermaid, which writes HTML of its own). Code keeps its newlines as character
# references.
_MARKDOWN_INERT = str.maketrans({"!": "&#33;", "`": "&#96;", "\n": " "})


class _ChatMarkdown(MarkdownIt):
    def validateLink(self, url: str) -> bool:
        return url.strip().lower().startswith(_LINK_SCHEMES)


def _removed_image(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # Every image token, however it was written (inline, reference, shortcut, nested in a
    # link or a table), comes here: its alt text stays, its URL never reaches the page.
    alt = renderer.renderInlineAsText(tokens[idx].children, options, env)
    return escapeHtml(f"[image removed: {alt}]")


def _inert_link_open(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return renderer.renderToken(tokens, idx, options, env)


def _plain_code(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # No language class: the only attribute a fence's text would set, and one a frontend may
    # act on.
    code = escapeHtml(tokens[idx].content).replace("\n", "&#10;")
    return f"<pre><code>{code}</code></pre>\n"


def _chat_markdown() -> MarkdownIt:
    md = _ChatMarkdown("commonmark", {"html": False, "breaks": True, "xhtmlOut": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _removed_image)
    md.add_render_rule("link_open", _inert_link_open)
    md.add_render_rule("fence", _plain_code)
    md.add_render_rule("code_block", _plain_code)
    return md


_CHAT_MARKDOWN = _chat_markdown()


def safe_markdown(text: str) -> str:
    """Model output (or a question) as the HTML the chat shows, rendered here by one Markdown
    tokenizer so that no parser in the browser decides what is an image: raw HTML in the text
    shows as text, every image as `[image removed: alt]`, links go to http(s) and mail only."""
    return _CHAT_MARKDOWN.render(text).translate(_MARKDOWN_INERT).rstrip()


@dataclass(frozen=True)
class ChipView:
    guard: str
    outcome: str
    label: str
    reason: str


def verdict_label(verdict: Verdict) -> str:
    if verdict.guard == "pii" and verdict.outcome != "unavailable":
        if verdict.action == "redact":
            count = verdict.reason.split(" ", 1)[0] if verdict.flagged else "0"
            return f"PII: {count} pseudonymised"
        return "PII: none found" if verdict.outcome == "allow" else f"PII: {verdict.action}"
    if verdict.guard == "injection" and verdict.outcome != "unavailable":
        return f"injection: {verdict.score:.2f} ({verdict.action})"
    if verdict.guard == "llama_guard":
        if verdict.outcome == "allow":
            return "Llama Guard: safe"
        if verdict.outcome == "unavailable":
            return f"Llama Guard: unavailable, {verdict.policy or 'no policy'}"
        return f"Llama Guard: unsafe {', '.join(verdict.categories)}"
    if verdict.outcome == "unavailable":
        return f"{verdict.guard}: unavailable, {verdict.policy or 'no policy'}"
    return f"{verdict.guard}: {verdict.outcome}"


def chip_view(verdict: Verdict) -> ChipView:
    return ChipView(verdict.guard, verdict.outcome, verdict_label(verdict), verdict.reason)


def chips_html(chips: Sequence[ChipView]) -> str:
    if not chips:
        return "<em>Verdicts appear here.</em>"
    spans = []
    for chip in chips:
        colour = _CHIP_COLOURS.get(chip.outcome, "#6e7781")
        spans.append(
            f'<span class="guard-chip" data-guard="{html.escape(chip.guard)}" '
            f'data-outcome="{html.escape(chip.outcome)}" title="{html.escape(chip.reason)}" '
            'style="display:inline-block;margin:2px;padding:2px 8px;border-radius:12px;'
            f'color:white;background:{colour};font-size:0.85em">{html.escape(chip.label)}</span>'
        )
    return "".join(spans)


def relevance_text(rerank_score: float) -> str:
    """The reranker's score as a reader can take it. sentence-transformers puts a sigmoid on a
    one-output cross-encoder (bge-reranker), so the score is a 0-1 relevance, shown as a
    percentage; a model saved with another activation gives logits, shown raw and named so
    rather than as a made-up percentage."""
    if 0.0 <= rerank_score <= 1.0:
        return f"relevance {rerank_score:.0%}"
    return f"reranker score {rerank_score:.2f}"


@dataclass(frozen=True)
class SourceView:
    """One citation as the page shows it; `text` is empty for answers resumed from history
    (passages are not copied into the history database). Its number is its rank; the raw
    scores go to the route and timings panel, not the label: a fused retrieval score is about
    0.03 for every passage. History rows stored before `rerank_score` existed load with None
    (their `score` was the reranker's when one ran)."""

    number: int
    location: str
    score: float
    text: str = ""
    rerank_score: float | None = None

    @property
    def label(self) -> str:
        shown = [f"rank {self.number}"]
        if self.rerank_score is not None:
            shown.append(relevance_text(self.rerank_score))
        return f"[{self.number}] {self.location} ({', '.join(shown)})"


def sources_of(answer: Answer) -> tuple[SourceView, ...]:
    return tuple(
        SourceView(c.number, c.location, c.score, c.text, c.rerank_score) for c in answer.citations
    )


def highlight_passage(text: str, answer: str) -> str:
    """The passage escaped, its sentences that share words with the answer marked."""
    answer_words = {w.lower() for w in _WORD.findall(answer)}
    pieces = []
    for sentence in _SENTENCE_END.split(text):
        escaped = html.escape(sentence)
        shared = {w.lower() for w in _WORD.findall(sentence)} & answer_words
        # Two shared words: one alone ("leave", "days") marks half of any handbook.
        pieces.append(f"<mark>{escaped}</mark>" if len(shared) >= 2 else escaped)
    return " ".join(pieces)


def passage_html(source: SourceView, answer: str) -> str:
    heading = f"<h4 class='passage-location'>[{source.number}] {html.escape(source.location)}</h4>"
    if not source.text:
        return heading + (
            "<p><em>This answer was resumed from history; passages are not stored there. "
            "Ask again to read the passage.</em></p>"
        )
    body = highlight_passage(source.text, answer)
    return f"{heading}<div class='passage' style='white-space:pre-wrap'>{body}</div>"


@dataclass(frozen=True)
class RouteView:
    task: str
    model: str
    confidence: float
    reason: str


def details_markdown(
    route: RouteView | None,
    stages: Sequence[StageReport],
    first_token_ms: float | None,
    sources: Sequence[SourceView] = (),
) -> str:
    lines = []
    if route is not None:
        reason = html.escape(route.reason)
        lines.append(
            f"**Route:** {html.escape(route.task)} → `{html.escape(route.model)}` "
            f"(confidence {route.confidence:.2f}; {reason})"
        )
    if first_token_ms is not None:
        lines.append(f"**First token:** {first_token_ms:.0f} ms")
    if stages:
        lines.append("\n| stage | status | ms | detail |\n|---|---|---|---|")
        for s in stages:
            detail = html.escape(s.detail).replace("|", "\\|")
            lines.append(f"| {s.name} | {s.status} | {s.ms:.1f} | {detail} |")
    if sources:
        # The raw scores, for whoever tunes retrieval (the source list shows rank and
        # relevance). By number only: a location holds a document's own heading, and this
        # panel is Markdown, where a heading could be written as an image to fetch.
        lines.append("\n| source | retrieval score | reranker score |\n|---|---|---|")
        for src in sources:
            rerank = "—" if src.rerank_score is None else f"{src.rerank_score:.4f}"
            lines.append(f"| [{src.number}] | {src.score:.4f} | {rerank} |")
    return "\n".join(lines) or "_No route: the question stopped before routing._"


@dataclass(frozen=True)
class AnswerView:
    """Everything the side panels show for one answer; also what history keeps of it."""

    request_id: str
    status: str
    text: str
    chips: tuple[ChipView, ...] = ()
    sources: tuple[SourceView, ...] = ()
    route: RouteView | None = None
    stages: tuple[StageReport, ...] = ()
    first_token_ms: float | None = None


def answer_view(answer: Answer, shown_text: str) -> AnswerView:
    route = answer.route
    return AnswerView(
        request_id=answer.request_id,
        status=answer.status,
        text=shown_text,
        chips=tuple(chip_view(v) for v in answer.verdicts),
        sources=sources_of(answer),
        route=None
        if route is None
        else RouteView(route.task, route.model, route.confidence, route.reason),
        stages=answer.stages,
        first_token_ms=answer.first_token_ms,
    )
