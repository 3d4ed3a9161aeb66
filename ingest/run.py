"""One ingestion run over a folder: walk, read, chunk, scan for injection, embed, write.

Point ids come from the file path and chunk content, so a rerun writes the same ids; a changed
file's new chunks are written before its stale ones are deleted, so an interrupted run never
leaves a file with fewer chunks than before.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from guardrails.injection import InjectionRules
from ingest.chunking import chunk_text
from ingest.readers import READERS, ReadError, read_document
from rag.compose import build_embedder, build_injection, open_store_for_embedder
from rag.embedder import SentenceEmbedder
from rag.schema import Chunk
from rag.settings import IngestSettings, Settings
from rag.store import Store, point_id


class IngestError(ValueError):
    """The run cannot start (missing folder, empty corpus); the message says what to do."""


@dataclass
class IngestReport:
    root: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks_written: int = 0
    chunks_flagged: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "removed": len(self.removed),
            "failed": len(self.failed),
            "chunks_written": self.chunks_written,
            "chunks_flagged": self.chunks_flagged,
        }


@dataclass(frozen=True)
class IngestParts:
    embedder: SentenceEmbedder
    store: Store
    injection: InjectionRules
    settings: IngestSettings


def _walk(root: Path, extensions: tuple[str, ...]) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                yield Path(directory) / name


def stored_path(root: Path, file: Path) -> str:
    """The path chunks carry: relative to the folder holding the ingested root, so citations
    read `examples/faq.md` and two roots with different names never collide."""
    return (Path(root.name) / file.relative_to(root)).as_posix()


def ingest_folder(
    root: Path,
    parts: IngestParts,
    prune: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> IngestReport:
    started = time.perf_counter()
    root = root.expanduser()
    if not root.exists():
        raise IngestError(f"{root} does not exist")
    if root.is_file():
        raise IngestError(f"{root} is a file; give the folder that holds it")
    root = root.resolve()
    extensions = tuple(e for e in parts.settings.extensions if e in READERS)
    files = list(_walk(root, extensions))
    if not files:
        raise IngestError(
            f"{root} holds no documents guardrag reads ({', '.join(extensions)}); nothing ingested"
        )
    report = IngestReport(root=str(root))
    states = parts.store.file_states()
    tokenizer = parts.embedder.tokenizer

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False, verbose=False))

    seen: set[str] = set()
    for file in files:
        name = stored_path(root, file)
        seen.add(name)
        try:
            if file.is_symlink() and not file.resolve().is_relative_to(root):
                # A link out of the folder would ingest whatever it points at (~/.ssh, /etc).
                raise ReadError(f"symlink to {file.resolve()}, outside the ingested folder")
            if file.stat().st_size > parts.settings.max_file_bytes:
                raise ReadError(
                    f"{file.stat().st_size} bytes is over the limit of "
                    f"{parts.settings.max_file_bytes} (ingest.max_file_bytes)"
                )
            data = file.read_bytes()
            file_hash = hashlib.sha256(data).hexdigest()[:32]
            state = states.get(name)
            if state and state.file_hashes == {file_hash} and state.points == state.expected_points:
                report.unchanged.append(name)
                continue
            document = read_document(file)
            pieces = chunk_text(
                document.text,
                count_tokens,
                parts.settings.chunk_tokens,
                parts.settings.chunk_overlap_tokens,
                markdown=document.markdown,
            )
            if not pieces:
                raise ReadError("no text in the file")
        except ReadError as exc:
            report.failed.append((str(file), str(exc)))
            progress(f"failed {file}: {exc}")
            continue
        chunks = []
        for ordinal, piece in enumerate(pieces):
            verdict = parts.injection.check_sync(piece.text)
            chunks.append(
                Chunk(
                    id=point_id(name, ordinal, piece.content_hash),
                    text=piece.text,
                    path=name,
                    section=piece.section,
                    page=document.page_at(piece.start),
                    start=piece.start,
                    end=piece.end,
                    content_hash=piece.content_hash,
                    file_hash=file_hash,
                    injection_score=verdict.score,
                    injection_categories=verdict.categories if verdict.flagged else (),
                )
            )
        report.chunks_flagged += sum(c.flagged for c in chunks)
        # The heading path goes into the embedding: "Sick leave" under "Leave" finds
        # questions about leave even when the paragraph never repeats the word.
        vectors = parts.embedder.embed_documents(
            [f"{c.section}\n{c.text}" if c.section else c.text for c in chunks]
        )
        parts.store.upsert(chunks, vectors, [len(chunks)] * len(chunks))
        parts.store.delete_file(name, keep_file_hash=file_hash)
        report.chunks_written += len(chunks)
        (report.updated if state else report.added).append(name)
        progress(f"{'updated' if state else 'added'} {name} ({len(chunks)} chunks)")

    if prune:
        prefix = f"{root.name}/"
        for name in sorted(states):
            if name.startswith(prefix) and name not in seen:
                parts.store.delete_file(name)
                report.removed.append(name)
                progress(f"removed {name}")
    report.seconds = time.perf_counter() - started
    return report


def build_ingest_parts(settings: Settings) -> IngestParts:
    """The parts an ingestion run uses, built by the composition root's builders."""
    embedder = build_embedder(settings)
    return IngestParts(
        embedder=embedder,
        store=open_store_for_embedder(settings, embedder),
        injection=build_injection(settings),
        settings=settings.ingest,
    )
