"""Ingestion into the real embedded Qdrant (Edge) and through qdrant-client's API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest

from ingest.run import IngestError, IngestParts, IngestProgress, build_ingest_parts, ingest_folder
from rag.compose import build_embedder, build_injection
from rag.schema import Chunk
from rag.settings import Settings
from rag.store import CollectionInfo, EdgeStore, ServerStore, StoreError, point_id
from tests.conftest import local_settings
from tests.test_readers import pdf_bytes


@pytest.fixture
def parts(provisioned: Settings, tmp_path: Path) -> IngestParts:
    return build_ingest_parts(local_settings(tmp_path / "data"))


def test_examples_ingest_with_sections_and_the_planted_injection_flagged(
    parts: IngestParts, examples_copy: Path
) -> None:
    report = ingest_folder(examples_copy, parts)
    assert len(report.added) == 8 and not report.failed
    chunks = list(parts.store.scroll_chunks())
    assert len(chunks) == report.chunks_written == parts.store.count()
    flagged = [c for c in chunks if c.flagged]
    assert [c.path for c in flagged] == ["handbook-copy/vendors/supplier-notes.md"]
    assert "instruction_override" in flagged[0].injection_categories
    leave = [c for c in chunks if c.path.endswith("leave-and-holidays.md")]
    assert any("›" in c.section for c in leave)


def test_reingest_of_unchanged_folder_writes_nothing(
    parts: IngestParts, examples_copy: Path
) -> None:
    ingest_folder(examples_copy, parts)
    before = {c.id for c in parts.store.scroll_chunks()}
    again = ingest_folder(examples_copy, parts)
    assert again.chunks_written == 0 and len(again.unchanged) == 8
    assert {c.id for c in parts.store.scroll_chunks()} == before


def test_a_changed_file_replaces_exactly_its_chunks_and_a_deleted_one_is_pruned(
    parts: IngestParts, examples_copy: Path
) -> None:
    ingest_folder(examples_copy, parts)
    before = list(parts.store.scroll_chunks())
    faq = examples_copy / "faq.md"
    faq.write_text(faq.read_text() + "\n\n## Late addition\n\nThe canteen opens at 08:00.\n")
    (examples_copy / "products" / "lantern-catalogue.txt").unlink()
    report = ingest_folder(examples_copy, parts)
    assert report.updated == ["handbook-copy/faq.md"]
    assert report.removed == ["handbook-copy/products/lantern-catalogue.txt"]
    after = list(parts.store.scroll_chunks())
    untouched = {c.id for c in before if not c.path.endswith(("faq.md", "lantern-catalogue.txt"))}
    assert untouched <= {c.id for c in after}
    assert not [c for c in after if c.path.endswith("lantern-catalogue.txt")]
    faq_chunks = [c for c in after if c.path.endswith("faq.md")]
    assert len({c.file_hash for c in faq_chunks}) == 1
    assert any("canteen opens at 08:00" in c.text for c in faq_chunks)


def test_broken_files_are_reported_with_path_and_reason_while_the_rest_ingests(
    parts: IngestParts, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nThe good file says the sky is blue.\n")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02\x03garbage" * 50)
    (folder / "latin1 name é.txt").write_bytes(
        "Caf\xe9 cr\xe8me is served at noon.".encode("latin-1")
    )
    report = ingest_folder(folder, parts)
    reasons = dict(report.failed)
    assert reasons[str(folder / "empty.txt")] == "empty file"
    assert "binary" in reasons[str(folder / "binary.txt")]
    assert sorted(report.added) == ["mixed/good.md", "mixed/latin1 name é.txt"]
    assert any("Café crème" in c.text for c in parts.store.scroll_chunks())
    # Text that is not UTF-8 ingests, and the report says how it was decoded.
    assert report.notices == [
        (str(folder / "latin1 name é.txt"), "decoded as cp1252, detected (not valid UTF-8)")
    ]


def test_a_symlink_out_of_the_folder_is_refused_and_reported(
    parts: IngestParts, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("The vault code is 1234.")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "real.md").write_text("# Real\n\nA real document.\n")
    (folder / "link.txt").symlink_to(outside)
    report = ingest_folder(folder, parts)
    assert report.added == ["docs/real.md"]
    assert "outside the ingested folder" in dict(report.failed)[str(folder / "link.txt")]
    assert not any("vault code" in c.text for c in parts.store.scroll_chunks())


def test_an_empty_folder_or_a_missing_one_is_a_clear_error(
    parts: IngestParts, tmp_path: Path
) -> None:
    with pytest.raises(IngestError, match="holds no documents"):
        ingest_folder(tmp_path, parts)
    with pytest.raises(IngestError, match="does not exist"):
        ingest_folder(tmp_path / "nope", parts)


def test_a_collection_filled_by_another_embedder_is_refused(
    provisioned: Settings, tmp_path: Path
) -> None:
    store = EdgeStore(tmp_path / "store")
    store.ensure_collection(CollectionInfo("BAAI/bge-small-en-v1.5", 384))
    store.close()
    with pytest.raises(StoreError, match=r"bge-small-en-v1\.5.*all-MiniLM-L6-v2"):
        EdgeStore(tmp_path / "store").ensure_collection(
            CollectionInfo("sentence-transformers/all-MiniLM-L6-v2", 384)
        )


@pytest.mark.parametrize("kind", ["edge", "client"])
def test_both_stores_keep_search_delete_and_reopen_alike(
    provisioned: Settings, tmp_path: Path, kind: str
) -> None:
    embedder = build_embedder(provisioned)

    def open_store() -> EdgeStore | ServerStore:
        # qdrant-client's embedded mode stands in for a Qdrant server, which cannot be
        # installed here; it speaks the same client API as `url=`.
        if kind == "edge":
            return EdgeStore(tmp_path / "edge")
        return ServerStore("guardrag-test", path=tmp_path / "client")

    store = open_store()
    info = CollectionInfo(embedder.name, embedder.dimension)
    store.ensure_collection(info)
    texts = [
        "Staff may work remotely up to 3 days a week.",
        "Receipts are submitted within 30 days.",
    ]
    chunks = [
        Chunk(id=point_id(f"d/{i}.md", 0, str(i)), text=t, path=f"d/{i}.md", file_hash=f"h{i}")
        for i, t in enumerate(texts)
    ]
    store.upsert(chunks, embedder.embed_documents(texts), [1, 1])
    hit = store.search(embedder.embed_query("How many remote days?"), 2)[0]
    assert hit.chunk.path == "d/0.md" and hit.chunk.text == texts[0]
    store.delete_file("d/1.md")
    store.close()
    reopened = open_store()
    assert reopened.open_existing() == info
    assert reopened.count() == 1
    assert set(reopened.file_states()) == {"d/0.md"}
    # The reopened store searches what it kept (the deleted chunk stays gone), dense and
    # hybrid alike: an empty list here once passed as "reopened".
    question = "How many remote days?"
    for found in (
        reopened.search(np.asarray(embedder.embed_query("receipts")), 5),
        reopened.search(np.asarray(embedder.embed_query(question)), 5, text=question),
    ):
        assert [(h.chunk.path, h.chunk.text) for h in found] == [("d/0.md", texts[0])]
    reopened.close()


@pytest.mark.parametrize("kind", ["edge", "client"])
def test_hybrid_search_lifts_an_exact_code_that_dense_search_ranks_low(
    provisioned: Settings, tmp_path: Path, kind: str
) -> None:
    embedder = build_embedder(provisioned)
    store: EdgeStore | ServerStore = (
        EdgeStore(tmp_path / "edge")
        if kind == "edge"
        else ServerStore("t", path=tmp_path / "client")
    )
    store.ensure_collection(CollectionInfo(embedder.name, embedder.dimension))
    texts = [
        f"Spare parts belong to lantern model {i}; each part fits one lantern." for i in range(12)
    ]
    texts.append("Order code QX-77813: replacement glass pane, 4 mm.")
    chunks = [
        Chunk(id=point_id(f"p/{i}", 0, str(i)), text=t, path=f"p/{i}") for i, t in enumerate(texts)
    ]
    store.upsert(chunks, embedder.embed_documents(texts), [1] * len(texts))
    question = "Which lantern does QX-77813 belong to?"
    vector = embedder.embed_query(question)
    dense_rank = [h.chunk.path for h in store.search(vector, 13)].index("p/12")
    hybrid_rank = [h.chunk.path for h in store.search(vector, 13, text=question)].index("p/12")
    assert dense_rank > 2, "the case only means something if dense search alone ranks it low"
    # RRF: first by BM25 and last by dense lands mid-table, inside the candidates reranked.
    # Decoys tie on BM25, so where among them it lands varies; it must rise clearly.
    assert hybrid_rank <= dense_rank - 4
    store.close()
    assert build_injection(provisioned).check_sync(texts[0]).outcome == "allow"


def test_a_pdf_of_thousands_of_pages_is_refused_while_the_rest_ingests(
    parts: IngestParts, tmp_path: Path
) -> None:
    folder = tmp_path / "manuals"
    folder.mkdir()
    pages = parts.settings.max_pdf_pages + 500
    one_page = pdfium.PdfDocument(pdf_bytes(["This manual page repeats."]))
    huge = pdfium.PdfDocument.new()
    huge.import_pages(one_page, [0] * pages)
    huge.save(str(folder / "huge manual.pdf"))
    (folder / "short.md").write_text("# Short\n\nThe short guide says lanterns need oil.\n")
    report = ingest_folder(folder, parts)
    limit = parts.settings.max_pdf_pages
    assert report.failed == [
        (
            str(folder / "huge manual.pdf"),
            f"{pages} pages is over the limit of {limit} (ingest.max_pdf_pages)",
        )
    ]
    assert report.added == ["manuals/short.md"]
    assert not any("manual page repeats" in c.text for c in parts.store.scroll_chunks())


# Facts only one file holds, so a search for each must cite exactly that file.
ODD_FILES = {
    "v1..v2 notes.md": "The v1 to v2 migration window closes on the fourteenth of March.",
    "Team Docs (2026)/Q3 report .. final.txt": "Lantern sales in the third quarter rose by 12%.",
    "Ünïcødé 日本語/naïve résumé ñ.md": "Résumé screening is done by the hiring manager only.",
    "ends with dots...md": "The warehouse in Lyon closes for the August holiday.",
}


def test_odd_file_names_ingest_cite_and_reingest_exactly(
    parts: IngestParts, tmp_path: Path
) -> None:
    folder = tmp_path / "odd"
    for name, fact in ODD_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{fact}\n")
    pdf = "Team Docs (2026)/scan .. ü.pdf"
    # Page 2 is longer than a chunk, so its first chunk starts on it (a chunk cites the page
    # it starts on).
    page_two = "\n".join(
        ["The fleet has 41 delivery vans."] + ["Routes are planned a day ahead."] * 40
    )
    (folder / pdf).write_bytes(pdf_bytes(["Cover page of the fleet report", page_two]))
    # A dotfile, however it is spelled, stays hidden as the file manager shows it.
    (folder / "..hidden.md").write_text("Hidden notes are never ingested.\n")
    report = ingest_folder(folder, parts)
    assert not report.failed
    stored = [f"odd/{name}" for name in [*ODD_FILES, pdf]]
    assert sorted(report.added) == sorted(stored)
    embedder = parts.embedder
    for name, fact in ODD_FILES.items():
        hit = parts.store.search(embedder.embed_query(fact), 1, text=fact)[0]
        assert hit.chunk.location == f"odd/{name}"
    hit = parts.store.search(embedder.embed_query("How many delivery vans?"), 1)[0]
    assert hit.chunk.location == f"odd/{pdf} · p. 2"

    again = ingest_folder(folder, parts)
    assert again.chunks_written == 0 and sorted(again.unchanged) == sorted(stored)
    (folder / "Ünïcødé 日本語/naïve résumé ñ.md").unlink()
    pruned = ingest_folder(folder, parts)
    assert pruned.removed == ["odd/Ünïcødé 日本語/naïve résumé ñ.md"]
    assert not any("Résumé screening" in c.text for c in parts.store.scroll_chunks())


def test_progress_counts_chunks_while_a_batch_embeds(
    parts: IngestParts, examples_copy: Path
) -> None:
    seen: list[IngestProgress] = []
    report = ingest_folder(examples_copy, parts, progress=seen.append)
    embedding = [p for p in seen if p.message.startswith("embedded")]
    # One batch holds the whole folder: without in-batch reports the count would sit at 0
    # until every chunk was embedded.
    assert len(embedding) >= 2 and embedding[0].chunks_embedded < report.chunks_written
    counts = [p.chunks_embedded for p in seen]
    assert counts == sorted(counts) and counts[-1] == report.chunks_written
    assert all(p.chunks_per_second > 0 for p in embedding)


def test_embedding_with_progress_keeps_the_texts_order(provisioned: Settings) -> None:
    embedder = build_embedder(provisioned)
    texts = [f"Note {i}: " + "lantern oil " * (i % 7) for i in range(70)]
    done: list[int] = []
    vectors = embedder.embed_documents(texts, on_progress=done.append, batches_per_report=1)
    assert done == [32, 64, 70]
    assert np.allclose(vectors, embedder.embed_documents(texts), atol=1e-5)
