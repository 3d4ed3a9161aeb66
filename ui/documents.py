"""Documents people upload in the chat: kept under the data directory per owner and ingested
in this process (an embedded store has one process), into the user's collection or the shared
one."""

from __future__ import annotations

import hashlib
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.run import IngestParts, IngestProgress, build_ingest_parts, ingest_folder
from rag.schema import Chunk
from rag.settings import Settings
from rag.store import SHARED
from ui.auth import CHAT_OWNER_PREFIX, Identity

# The folder name becomes the first part of a stored path ("uploads/handbook.pdf"), as a
# folder ingested with `guardrag ingest` does.
SHARED_FOLDER = "uploads"
# Lower case only: a laptop's file system may fold case, and "Alice" and "alice" must not
# share a folder.
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# The folders of names that are not safe as they are; no safe name may start with it, so the
# two kinds of folder names never meet.
_HASHED_PREFIX = "user-"
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_. -]")


class UploadError(ValueError):
    """An upload that is refused as a whole; the message says why."""


@dataclass(frozen=True)
class DocumentRow:
    path: str
    owner: str
    chunks: int

    @property
    def scope(self) -> str:
        return "shared" if self.owner == SHARED else "mine"


@dataclass(frozen=True)
class UploadResult:
    owner: str
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    # Files ingested with a note ("decoded as cp1252, detected (not valid UTF-8)").
    notices: tuple[tuple[str, str], ...] = ()
    chunks_flagged: int = 0
    chunks_unscanned: int = 0
    seconds: float = 0.0


def folder_name(owner: str) -> str:
    """An owner's upload folder: the user's name when it is a safe file name, else a hash of
    the owner key. One folder per owner, never shared: each upload re-ingests the whole folder
    for the uploader, so two owners in one folder would see each other's files."""
    if owner == SHARED:
        return SHARED_FOLDER
    name = owner.removeprefix(CHAT_OWNER_PREFIX)
    if (
        owner.startswith(CHAT_OWNER_PREFIX)
        and _SAFE_NAME.match(name)
        and not name.startswith(_HASHED_PREFIX)
        and name != SHARED_FOLDER
    ):
        return name
    return _HASHED_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:32]


def safe_file_name(name: str) -> str:
    """The last path part, without characters that could escape or confuse a folder."""
    base = Path(name.replace("\\", "/")).name
    cleaned = _UNSAFE_CHARS.sub("_", base).strip(" .")
    if not cleaned:
        raise UploadError(f"{name!r} is not a usable file name")
    return cleaned[:120]


@dataclass
class DocumentLibrary:
    settings: Settings
    parts_factory: Callable[[Settings], IngestParts] = build_ingest_parts
    _parts: IngestParts | None = field(default=None, init=False)
    # One ingestion at a time: two runs would compete for the two cores and the embedder.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def root(self) -> Path:
        return self.settings.data_dir / "uploads"

    def folder(self, owner: str) -> Path:
        return self.root / folder_name(owner)

    def parts(self) -> IngestParts:
        if self._parts is None:
            self._parts = self.parts_factory(self.settings)
        return self._parts

    def _owner_for(self, who: Identity, shared: bool) -> str:
        if shared and not who.admin:
            raise UploadError("only admins may add documents to the shared collection")
        return SHARED if shared else who.owner

    def upload(
        self,
        who: Identity,
        files: Sequence[tuple[str, Path]],
        shared: bool = False,
        progress: Callable[[IngestProgress], None] = lambda _: None,
    ) -> UploadResult:
        """Copy (original name, temporary path) pairs into the owner's folder and ingest it."""
        owner = self._owner_for(who, shared)
        limits = self.settings.chat
        if not files:
            raise UploadError("no files given")
        if len(files) > limits.max_upload_files:
            raise UploadError(
                f"{len(files)} files at once; the limit is {limits.max_upload_files} "
                "(chat.max_upload_files)"
            )
        extensions = self.settings.ingest.extensions
        staged: list[tuple[str, Path]] = []
        for original, temporary in files:
            name = safe_file_name(original)
            if Path(name).suffix.lower() not in extensions:
                raise UploadError(f"{name}: not a format guardrag reads ({', '.join(extensions)})")
            size = temporary.stat().st_size
            if size > limits.max_upload_bytes:
                raise UploadError(
                    f"{name} has {size} bytes; the limit is {limits.max_upload_bytes} "
                    "(chat.max_upload_bytes)"
                )
            staged.append((name, temporary))
        folder = self.folder(owner)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._check_quota(folder, staged)
            for name, temporary in staged:
                shutil.copyfile(temporary, folder / name)
            # The whole folder: files uploaded before are unchanged and cost one hash each.
            # Never pruned: deleting is explicit, and a same-named folder ingested with the
            # CLI is left alone.
            report = ingest_folder(
                folder, self.parts(), prune=False, progress=progress, owner=owner
            )
            for path, _reason in report.failed:
                # A file that cannot be read is not kept to fail again on every upload.
                Path(path).unlink(missing_ok=True)
        return UploadResult(
            owner=owner,
            added=tuple(report.added),
            updated=tuple(report.updated),
            unchanged=tuple(report.unchanged),
            failed=tuple((Path(p).name, reason) for p, reason in report.failed),
            notices=tuple((Path(p).name, note) for p, note in report.notices),
            chunks_flagged=report.chunks_flagged,
            chunks_unscanned=report.chunks_unscanned,
            seconds=report.seconds,
        )

    def _check_quota(self, folder: Path, staged: Sequence[tuple[str, Path]]) -> None:
        """Refuse an upload that would take the owner's folder over chat.max_user_files or
        chat.max_user_bytes (a file uploaded again under its name replaces its old copy)."""
        limits = self.settings.chat
        kept = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
        kept.update((name, temporary.stat().st_size) for name, temporary in staged)
        if len(kept) > limits.max_user_files:
            raise UploadError(
                f"this upload would make {len(kept)} documents; each user may keep "
                f"{limits.max_user_files} (chat.max_user_files): delete some first"
            )
        total = sum(kept.values())
        if total > limits.max_user_bytes:
            raise UploadError(
                f"this upload would make {total} bytes of documents; each user may keep "
                f"{limits.max_user_bytes} (chat.max_user_bytes): delete some first"
            )

    def documents(self, who: Identity) -> list[DocumentRow]:
        """The user's own documents, then the shared ones."""
        store = self.parts().store
        rows = []
        for owner in (who.owner, SHARED):
            states = store.file_states(owner)
            rows += [DocumentRow(path, owner, s.points) for path, s in sorted(states.items())]
        return rows

    def delete(self, who: Identity, path: str, shared: bool = False) -> bool:
        owner = self._owner_for(who, shared)
        store = self.parts().store
        if path not in store.file_states(owner):
            return False
        with self._lock:
            store.delete_file(path, owner=owner)
            prefix = f"{folder_name(owner)}/"
            if path.startswith(prefix):
                kept = self.folder(owner) / path.removeprefix(prefix)
                if kept.resolve().is_relative_to(self.folder(owner).resolve()):
                    kept.unlink(missing_ok=True)
        return True

    def quarantined(self, who: Identity) -> list[Chunk]:
        """Chunks ingest flagged as injection, in every collection: for admins only."""
        if not who.admin:
            raise PermissionError("only admins see quarantined chunks")
        flagged = [c for c in self.parts().store.scroll_chunks() if c.flagged]
        return sorted(flagged, key=lambda c: (c.path, c.start))
