import itertools
from pathlib import Path

from ingest.chunking import chunk_document, chunk_text, markdown_sections
from ingest.readers import read_document
from rag.models import resolve_model
from rag.settings import Settings
from tests.conftest import EXAMPLES


def words(text: str) -> int:
    return len(text.split())


DOC = """# Handbook

Intro paragraph.

## Leave

Annual leave is 27 days.

### Sick leave

A doctor's note is needed after 3 days.

```
# not a heading inside a fence
```

## Travel

Trains are preferred under 4 hours.
"""


def test_sections_carry_the_heading_path() -> None:
    paths = [s.path for s in markdown_sections(DOC)]
    assert paths == [
        "Handbook",
        "Handbook › Leave",
        "Handbook › Leave › Sick leave",
        "Handbook › Travel",
    ]


def test_chunk_offsets_point_back_into_the_source() -> None:
    pieces = chunk_text(DOC, words, max_tokens=50, overlap_tokens=5, markdown=True)
    assert pieces
    for piece in pieces:
        assert piece.text == DOC[piece.start : piece.end].strip()
    sick = next(p for p in pieces if "doctor" in p.text)
    assert sick.section == "Handbook › Leave › Sick leave"


def test_long_text_is_cut_under_the_token_limit_with_nothing_lost() -> None:
    paragraph = " ".join(f"Sentence number {i} says something." for i in range(200))
    text = paragraph + "\n\nA short closing paragraph."
    pieces = chunk_text(text, words, max_tokens=40, overlap_tokens=10, markdown=False)
    assert len(pieces) > 5
    assert all(words(p.text) <= 40 for p in pieces)
    joined = " ".join(p.text for p in pieces)
    for i in range(200):
        assert f"Sentence number {i} says" in joined


def test_a_short_paragraph_is_repeated_as_overlap_into_the_next_chunk() -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 8 for i in range(6)]
    pieces = chunk_text(
        "\n\n".join(paragraphs), words, max_tokens=25, overlap_tokens=12, markdown=False
    )
    assert len(pieces) >= 3
    for earlier, later in itertools.pairwise(pieces):
        last_paragraph = earlier.text.split("\n\n")[-1]
        assert later.text.startswith(last_paragraph)


def test_one_tokenizer_pass_cuts_the_same_chunks_as_tokenizing_every_span(
    provisioned: Settings,
) -> None:
    from transformers import AutoTokenizer

    path = resolve_model(provisioned.embedder.model, provisioned.models_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert tokenizer.is_fast

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False, verbose=False))

    documents = [read_document(f) for f in sorted(EXAMPLES.rglob("*")) if f.is_file()]
    assert len(documents) >= 5
    for document in documents:
        for limit, overlap in [(200, 30), (40, 12)]:
            fast = chunk_document(document.text, tokenizer, limit, overlap, document.markdown)
            slow = chunk_text(document.text, count, limit, overlap, document.markdown)
            assert fast == slow
            assert all(count(p.text) <= limit for p in fast)


def test_a_unicode_line_separator_starts_no_heading_and_offsets_stay_exact(
    tmp_path: Path,
) -> None:
    # U+2028 and U+0085 are line breaks to str.splitlines(), not to Markdown.
    text = "# Policy\n\nPreface\u2028# Not a heading\u0085# Nor this\n\n## Real\r\nBody\n"
    sections = markdown_sections(text)
    assert [s.path for s in sections] == ["Policy", "Policy › Real"]
    assert "".join(text[s.start : s.end] for s in sections) == text
    page = tmp_path / "page.md"
    page.write_text("Intro\u2028# Fake title\n\n# Real title\n", encoding="utf-8")
    assert read_document(page).title == "Real title"
