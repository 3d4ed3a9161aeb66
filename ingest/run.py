"""One ingestion run over a folder: walk, read, chunk, scan for injection, embed, write.

Point ids come from the file path and chunk content, so a rerun writes the same ids; a changed
file's new chunks are written before its stale ones are deleted, so an interrupted run never
leaves a file with fewer chunks than before. A run writes for one owner (a user, or "shared"):
it sees, replaces and prunes only that owner's chunks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from guardrails.injection import InjectionDetector
from guardrails.registry import PolicedGuard, find_guard, screen
from guardrails.verdict import GuardContext
from ingest.chunking import chunk_document
from ingest.readers import READERS, ReadError, ReadLimits, read_document
from rag.compose import (
    build_embedder,
    build_guards,
    build_injection,
    open_store_for_embedder,
)
from rag.embedder import EmbedderUnavailable, SentenceEmbedder
from rag.schema import Chunk
from rag.settings import IngestSettings, Settings, SettingsError
from rag.store import SHARED, FileState, Store, point_id

log = logging.getLogger(__name__)


class IngestError(ValueError):
    """The run cannot start (missing folder, empty corpus); the message says what to do."""


class ChunkGuardRefused(ValueError):
    """A chunk guard blocked one of a file's chunks: that file is not stored."""


@dataclass
class IngestReport:
    root: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Files ingested with something the user should know (text that was not UTF-8, and how
    # it was decoded): path and note.
    notices: list[tuple[str, str]] = field(default_factory=list)
    chunks_written: int = 0
    chunks_flagged: int = 0
    # Chunks stored with findings replaced by a typed placeholder (`[AWS_ACCESS_KEY]`) by a
    # redacting chunk guard (secrets).
    chunks_redacted: int = 0
    # Chunks stored without an injection verdict because the injection guard is off
    # (guards.off): said in the report, never silently treated as scanned.
    chunks_unscanned: int = 0
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
            "chunks_redacted": self.chunks_redacted,
            "chunks_unscanned": self.chunks_unscanned,
        }


@dataclass(frozen=True)
class IngestParts:
    embedder: SentenceEmbedder
    store: Store
    # None when guards.off names injection: chunks are stored unscanned (and counted).
    injection: InjectionDetector | None
    settings: IngestSettings
    # Chunk guards whose policy redacts (rag/compose.py GUARDS): they run on each chunk's
    # text before it is embedded or stored. The injection guard runs after embedding.
    redacting_guards: tuple[PolicedGuard, ...] = ()


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


@dataclass(frozen=True)
class IngestProgress:
    """Where a run is, for a progress bar or a log line."""

    files_done: int
    files_total: int
    chunks_written: int
    message: str
    # Chunks embedded so far, including a batch not yet written: what moves while one large
    # batch embeds, and what chunks/s counts.
    chunks_embedded: int = 0
    seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Prepared:
    """One file after reading and chunking: its chunks, or why it needs none."""

    name: str
    file: Path
    status: Literal["chunks", "unchanged", "failed"]
    chunks: tuple[Chunk, ...] = ()
    # Each chunk's embedded text in tokens (heading path and text), for the embedder's sort.
    token_counts: tuple[int, ...] = ()
    notice: str = ""
    is_update: bool = False
    file_hash: str = ""
    reason: str = ""
    redacted: int = 0


def ingest_folder(
    root: Path,
    parts: IngestParts,
    prune: bool = True,
    progress: Callable[[IngestProgress], None] = lambda _: None,
    owner: str = SHARED,
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
    states = parts.store.file_states(owner)
    names = {file: stored_path(root, file) for file in files}

    files_done = 0
    embedded = 0
    pending: list[Chunk] = []
    tokens_of: dict[str, int] = {}
    unwritten: dict[str, int] = {}
    in_flight: dict[str, _Prepared] = {}

    def tell(message: str) -> None:
        progress(
            IngestProgress(
                files_done,
                len(files),
                report.chunks_written,
                message,
                chunks_embedded=embedded,
                seconds=time.perf_counter() - started,
            )
        )

    def advance(message: str) -> None:
        nonlocal files_done
        files_done += 1
        tell(message)

    def embedding(done_before: int, batch_size: int) -> Callable[[int], None]:
        def on_progress(done: int) -> None:
            nonlocal embedded
            embedded = done_before + done
            tell(f"embedded {done} of {batch_size} chunks in this batch")

        return on_progress

    def write(batch: list[Chunk]) -> None:
        # The heading path goes into the embedding: "Sick leave" under "Leave" finds
        # questions about leave even when the paragraph never repeats the word.
        vectors = parts.embedder.embed_documents(
            [f"{c.section}\n{c.text}" if c.section else c.text for c in batch],
            on_progress=embedding(embedded, len(batch)),
            # Two batches of 32 take about a second here: the bar moves that often.
            batches_per_report=2,
            token_counts=[tokens_of.pop(c.id) for c in batch],
        )
        # The injection scan reads the vectors just computed: the trained head scores each
        # chunk's own embedding, so scanning adds no second pass of the embedder.
        if parts.injection is None:
            report.chunks_unscanned += len(batch)
        else:
            injection = parts.injection
            batch = [scanned(injection, c, v) for c, v in zip(batch, vectors, strict=True)]
            report.chunks_flagged += sum(c.flagged for c in batch)
        counts = [len(in_flight[c.path].chunks) for c in batch]
        parts.store.upsert(batch, vectors, counts, owner)
        report.chunks_written += len(batch)
        for chunk in batch:
            unwritten[chunk.path] -= 1
            if unwritten[chunk.path] == 0:
                done = in_flight.pop(chunk.path)
                # Only now, with every new chunk stored, do the file's old chunks go: a crash
                # before this line leaves old and new, which the rerun resolves. A file the
                # store held nothing of when the run began has nothing stale to delete.
                if done.is_update:
                    parts.store.delete_file(done.name, keep_file_hash=done.file_hash, owner=owner)
                (report.updated if done.is_update else report.added).append(done.name)
                verb = "updated" if done.is_update else "added"
                advance(f"{verb} {done.name} ({len(done.chunks)} chunks)")

    # Reading, chunking and scanning run in this thread, between embedding batches. A reader
    # thread beside the embedder was measured slower on two cores: its Python work competes
    # with torch's threads for the cores and the GIL (make bench-ingest).
    for item in (_prepare(file, names[file], root, parts, states, owner) for file in files):
        if item.status == "unchanged":
            report.unchanged.append(item.name)
            advance(f"unchanged {item.name}")
            continue
        if item.status == "failed":
            report.failed.append((str(item.file), item.reason))
            # The stored name, not the file's path: the chat shows progress to the uploader,
            # and the server's folders are none of their business.
            advance(f"failed {item.name}: {item.reason}")
            continue
        if item.notice:
            report.notices.append((str(item.file), item.notice))
        report.chunks_redacted += item.redacted
        in_flight[item.name] = item
        unwritten[item.name] = len(item.chunks)
        pending.extend(item.chunks)
        tokens_of.update(zip((c.id for c in item.chunks), item.token_counts, strict=True))
        batch = parts.settings.write_batch
        while len(pending) >= batch:
            write(pending[:batch])
            pending = pending[batch:]
    if pending:
        write(pending)

    if prune:
        prefix = f"{root.name}/"
        seen = set(names.values())
        for name in sorted(states):
            if name.startswith(prefix) and name not in seen:
                parts.store.delete_file(name, owner=owner)
                report.removed.append(name)
                tell(f"removed {name}")
    if report.chunks_written or report.removed:
        # After the writes, not between them: one index build for the whole run.
        tell("building the search index")
        parts.store.optimize()
    report.seconds = time.perf_counter() - started
    return report


def _prepare(
    file: Path,
    name: str,
    root: Path,
    parts: IngestParts,
    states: dict[str, FileState],
    owner: str,
) -> _Prepared:
    limits = parts.settings
    try:
        if file.is_symlink() and not file.resolve().is_relative_to(root):
            # A link out of the folder would ingest whatever it points at (~/.ssh, /etc).
            raise ReadError(f"symlink to {file.resolve()}, outside the ingested folder")
        size = file.stat().st_size
        if size > limits.max_file_bytes:
            raise ReadError(
                f"{size} bytes is over the limit of {limits.max_file_bytes} (ingest.max_file_bytes)"
            )
        file_hash = hashlib.sha256(file.read_bytes()).hexdigest()[:32]
        state = states.get(name)
        if state and state.file_hashes == {file_hash} and state.points == state.expected_points:
            return _Prepared(name, file, "unchanged")
        document = read_document(file, ReadLimits(limits.max_pdf_pages, limits.max_unzipped_bytes))
        pieces = chunk_document(
            document.text,
            parts.embedder.tokenizer,
            limits.chunk_tokens,
            limits.chunk_overlap_tokens,
            markdown=document.markdown,
        )
        if not pieces:
            raise ReadError("no text in the file")
    except ReadError as exc:
        return _Prepared(name, file, "failed", reason=str(exc))
    except OSError as exc:
        return _Prepared(name, file, "failed", reason=f"cannot read: {exc.strerror or exc}")
    except (MemoryError, EmbedderUnavailable):
        # Not this file's fault: out of memory, or the embedder (loaded on first use, here)
        # cannot load. The whole run stops.
        raise
    except Exception as exc:
        # One file's failure, whatever it is, fails that file only: a crafted file once
        # aborted whole runs (RecursionError, zipfile.BadZipFile). The readers turn every
        # failure they know into a ReadError, so this one is a bug worth its traceback.
        log.warning("reading %s failed unexpectedly", file, exc_info=True)
        reason = (
            f"unexpected {type(exc).__name__} while reading it: {exc} "
            "(a guardrag bug; the log has the traceback)"
        )
        return _Prepared(name, file, "failed", reason=reason)
    chunks = []
    heading_tokens: dict[str, int] = {}
    token_counts = []
    try:
        texts = redacted_texts([piece.text for piece in pieces], parts.redacting_guards)
    except ChunkGuardRefused as exc:
        return _Prepared(name, file, "failed", reason=str(exc))
    for ordinal, (piece, text) in enumerate(zip(pieces, texts, strict=True)):
        if piece.section not in heading_tokens:
            heading_tokens[piece.section] = (
                len(parts.embedder.tokenizer.tokenize(piece.section)) if piece.section else 0
            )
        token_counts.append(piece.tokens + heading_tokens[piece.section])
        chunks.append(
            Chunk(
                id=point_id(name, ordinal, piece.content_hash, owner),
                text=text,
                path=name,
                section=piece.section,
                page=document.page_at(piece.start),
                start=piece.start,
                end=piece.end,
                content_hash=piece.content_hash,
                file_hash=file_hash,
            )
        )
    return _Prepared(
        name,
        file,
        "chunks",
        chunks=tuple(chunks),
        token_counts=tuple(token_counts),
        notice=f"decoded as {document.decoded_as}" if document.decoded_as else "",
        is_update=state is not None,
        file_hash=file_hash,
        redacted=sum(t != p.text for t, p in zip(texts, pieces, strict=True)),
    )


def redacted_texts(texts: list[str], guards: tuple[PolicedGuard, ...]) -> list[str]:
    """Each chunk's text as the redacting guards leave it. One event loop per file: the
    guards' checks are coroutines, and a loop per chunk would cost more than the checks."""
    if not guards:
        return texts
    context = GuardContext(checked_as="chunk")

    async def redact_all() -> list[str]:
        redacted = []
        for text in texts:
            screening = await screen(guards, text, context)
            if screening.blocking is not None:
                # A redacting guard that could not run, with a policy that blocks: the
                # chunk is not stored unredacted.
                verdict = screening.blocking
                raise ChunkGuardRefused(f"the {verdict.guard} check: {verdict.reason}")
            redacted.append(screening.text)
        return redacted

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(redact_all())
    # Called from a coroutine (an upload handler, a script): that loop is busy running us.
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, redact_all()).result()


def scanned(injection: InjectionDetector, chunk: Chunk, vector: np.ndarray) -> Chunk:
    """The chunk with the injection guard's verdict on it, checked as a chunk with the
    vector ingest embedded it as (the same detector questions go through)."""
    verdict = injection.check_sync(chunk.text, "chunk", vector)
    categories = verdict.categories if verdict.flagged else ()
    return replace(chunk, injection_score=verdict.score, injection_categories=categories)


def build_ingest_parts(settings: Settings) -> IngestParts:
    """The parts an ingestion run uses, built by the composition root's builders."""
    embedder = build_embedder(settings)
    chunk_guards = build_guards(settings, "chunk")
    # The injection guard as the registry built it; it reads each chunk's vector after
    # embedding, so it runs in `scanned`, not with the redacting guards.
    listed = find_guard(chunk_guards, "injection")
    injection = listed.guard if listed is not None else None
    if injection is not None and not isinstance(injection, InjectionDetector):
        # A registry entry for injection that is not the detector: scan with the detector
        # the settings describe, as before (the scan needs `check_sync` with a vector).
        injection = build_injection(settings)
    # At ingest a chunk guard either scans (injection: a verdict stored on the chunk) or
    # redacts (its findings replaced in the stored text). One that does neither would be
    # listed for chunks and never run: refused here, by name, rather than skipped in silence.
    idle = [g.name for g in chunk_guards if g.name != "injection" and not g.redacts]
    if idle:
        raise SettingsError(
            f"guard {idle[0]} checks chunks, but ingest runs a chunk guard only when its "
            "policy redacts (guards.<name>.policy.on_flag: redact) or it is the injection scan"
        )
    return IngestParts(
        embedder=embedder,
        store=open_store_for_embedder(settings, embedder),
        injection=injection,
        settings=settings.ingest,
        redacting_guards=tuple(g for g in chunk_guards if g.redacts),
    )
