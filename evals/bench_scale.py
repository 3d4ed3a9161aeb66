"""The store at scale (issue 18, `make bench-scale`): the embedded store (Qdrant Edge) at 10k,
100k and 1M points, built the way `make bench-ingest` builds its 100k store, and the peak
memory of ingestion against corpus size.

Points are NOT 1M re-embedded chunks: the development set's chunks are ingested and embedded
once (real vectors), and every point past them is a mix of three real vectors plus a little
noise (as evals/bench_ingest.py's `replicate_vectors`), carrying a real chunk's text for BM25.
The questions are the development set's own, embedded for real.

Every size runs in processes of its own, one that builds the store and one that reopens and
searches it, so each reports its own peak RSS (a process's peak never goes down). Each figure
stands beside its same-run baseline: HNSW beside exact search at the same size, the rest beside
the 100k row (or the middle size asked for).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from evals.bench import BenchRow, require_retrieval_set
from rag.schema import Chunk, Hit
from rag.settings import StoreSettings
from rag.store import CollectionInfo, EdgeStore, point_id

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "eval-data" / "retrieval_qa"
DIMENSION = 384
STORE_INFO = CollectionInfo("sentence-transformers/all-MiniLM-L6-v2", DIMENSION)
# As evals/bench_ingest.py: mixes of three real vectors plus this much noise, so points are
# distinct and spread over the region real embeddings fill (exact copies would tie).
MIX_NOISE = 0.3
# Points written per upsert, and generated per step: the builder never holds every vector.
FILL_BATCH = 2000
# Chunks a synthetic file of the ingest corpus is made of.
CHUNKS_PER_FILE = 50
# A recall floor and the targets the issue sets at 1M points (applied at every size).
RECALL_FLOOR = 0.95
DENSE_P95_MS = 5.0
HYBRID_P95_MS = 10.0
PEAK_RSS_GIB = 4.0
REOPEN_S = 10.0
GIB = 1024**3


def log(message: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started. Linux's VmHWM, not getrusage's
    ru_maxrss: that one survives exec, so a child would report its parent's peak (the
    parent holds the embedder) whenever its own is smaller."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """The peak of this process's anonymous RSS (its heap: what it cannot give back), sampled
    on a thread. VmHWM also counts the store's memory-mapped files, pages the kernel drops
    under pressure, so a store on disk shows both."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.peak = status_bytes("RssAnon")
        self._stop = threading.Event()
        self._every_s = every_s
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._every_s):
            self.peak = max(self.peak, status_bytes("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_bytes("RssAnon"))
        return self.peak


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def disk_bytes(path: Path) -> int:
    """Bytes the files under `path` occupy on disk (allocated blocks, not apparent sizes)."""
    return sum(
        (Path(folder) / name).stat().st_blocks * 512
        for folder, _, names in os.walk(path)
        for name in names
    )


@dataclass(frozen=True)
class Latency:
    p50: float
    p95: float

    def __str__(self) -> str:
        return f"{self.p50:.2f} / {self.p95:.2f} ms"


def timed_each(search: Callable[[int], Any], queries: int) -> tuple[Latency, list[Any]]:
    spent, results = [], []
    for index in range(queries):
        started = time.perf_counter()
        results.append(search(index))
        spent.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(spent, [50, 95])
    return Latency(float(p50), float(p95)), results


# ---------------------------------------------------------------- the load, built once


@dataclass(frozen=True)
class Load:
    """Real chunks with their real vectors, and real questions with theirs."""

    chunks: list[Chunk]
    vectors: np.ndarray
    questions: list[str]
    probes: np.ndarray

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self.vectors)
        np.save(folder / "probes.npy", self.probes)
        chunks = [asdict(c) for c in self.chunks]
        (folder / "load.json").write_text(
            json.dumps({"chunks": chunks, "questions": self.questions})
        )

    @classmethod
    def read(cls, folder: Path) -> Load:
        data = json.loads((folder / "load.json").read_text())
        chunks = [
            Chunk(**{**c, "injection_categories": tuple(c["injection_categories"])})
            for c in data["chunks"]
        ]
        return cls(
            chunks,
            np.load(folder / "vectors.npy"),
            data["questions"],
            np.load(folder / "probes.npy"),
        )


def build_load(dataset: Path, queries: int, scratch: Path) -> Load:
    """The development set ingested by guardrag's own ingest, its distinct chunks embedded as
    ingest embeds them, and `queries` of its questions embedded as questions."""
    from evals.retrieval import load_questions
    from ingest.run import build_ingest_parts, ingest_folder
    from rag.compose import configure_runtime
    from rag.settings import load_settings

    settings = load_settings(data_dir=scratch / "guardrag")
    configure_runtime(settings)
    parts = build_ingest_parts(settings)
    report = ingest_folder(dataset / "docs", parts)
    if report.failed:
        raise RuntimeError(f"the development set should read cleanly; failed: {report.failed}")
    texts: dict[str, Chunk] = {}
    for chunk in parts.store.scroll_chunks():
        texts.setdefault(embedded_text(chunk), chunk)
    parts.store.close()
    chunks = [texts[t] for t in sorted(texts)]
    vectors = parts.embedder.embed_documents([embedded_text(c) for c in chunks])
    asked = [q.question for q in load_questions(dataset)]
    asked = [asked[i % len(asked)] for i in range(queries)]
    probes = parts.embedder.embed_documents([parts.embedder.query_instruction + q for q in asked])
    return Load(chunks, vectors.astype(np.float32), asked, probes.astype(np.float32))


def embedded_text(chunk: Chunk) -> str:
    # What ingest hands the embedder (ingest/run.py): the heading path, then the chunk.
    return f"{chunk.section}\n{chunk.text}" if chunk.section else chunk.text


def mixed_vectors(real: np.ndarray, start: int, stop: int, seed: int = 0) -> np.ndarray:
    """Points start..stop-1: the real vectors first, then mixes of three of them with a little
    noise (as evals/bench_ingest.py's `replicate_vectors`). Seeded by `start`, so a store
    is the same whichever process builds it, one batch at a time."""
    rng = np.random.default_rng([seed, start])
    count = stop - start
    picks = rng.integers(0, len(real), size=(count, 3))
    weights = rng.dirichlet([1.0, 1.0, 1.0], size=count).astype(np.float32)
    vectors = (real[picks] * weights[..., None]).sum(axis=1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors += rng.standard_normal(vectors.shape).astype(np.float32) * (
        MIX_NOISE / np.sqrt(real.shape[1])
    )
    own = np.arange(start, stop) < len(real)
    vectors[own] = real[start : min(stop, len(real))]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# ---------------------------------------------------------------- one size, in its own process


def build_store(load: Load, size: int, path: Path, tuning: StoreSettings) -> dict[str, Any]:
    """Create, fill and index a store of `size` points, then close it (the builder process)."""
    started_rss = current_rss_bytes()
    anon = AnonPeak()
    store = EdgeStore(path, tuning)
    store.ensure_collection(STORE_INFO)
    started = time.perf_counter()
    for at in range(0, size, FILL_BATCH):
        stop = min(size, at + FILL_BATCH)
        batch = [
            replace(
                load.chunks[i % len(load.chunks)],
                id=point_id(f"synthetic/{i // 50}.md", i % 50, str(i)),
                path=f"synthetic/{i // 50}.md",
            )
            for i in range(at, stop)
        ]
        store.upsert(batch, mixed_vectors(load.vectors, at, stop), [50] * len(batch))
        if at and at % 100_000 == 0:
            log(f"  {at:,} points written")
    upsert_s = time.perf_counter() - started
    log(f"  {size:,} points written in {upsert_s:.1f} s; optimize() builds the index")
    started = time.perf_counter()
    store.optimize()
    optimize_s = time.perf_counter() - started
    store.close()
    return {
        "upsert_s": upsert_s,
        "optimize_s": optimize_s,
        "start_rss": started_rss,
        "peak_rss": peak_rss_bytes(),
        "peak_anon": anon.stop(),
        "disk": disk_bytes(path),
    }


def serve_store(
    load: Load, path: Path, tuning: StoreSettings, sweep_ef: Sequence[int] = ()
) -> dict[str, Any]:
    """Reopen the store as a chat process would and search it, dense through the index and
    hybrid (dense + BM25, fused); then exact search, the ground truth and baseline, last:
    it reads every float32 vector, which a chat process never does, so the serving peak
    RSS is taken before it."""
    started_rss = current_rss_bytes()
    anon = AnonPeak()
    started = time.perf_counter()
    store = EdgeStore(path, tuning)
    if store.open_existing() is None:
        raise RuntimeError(f"no store at {path}")
    reopen_s = time.perf_counter() - started
    started = time.perf_counter()
    store.search(load.probes[0], 10)
    first_ms = (time.perf_counter() - started) * 1000
    queries = len(load.probes)
    # The first pass after reopening pages the graph and the vectors in from disk; a chat
    # process that has run a while answers from the second.
    cold, _ = timed_each(lambda i: store.search(load.probes[i], 10), queries)
    dense, found = timed_each(lambda i: store.search(load.probes[i], 10), queries)
    hybrid, _ = timed_each(lambda i: store.search(load.probes[i], 10, load.questions[i]), queries)
    serving_peak_rss, serving_peak_anon = peak_rss_bytes(), anon.stop()
    exact, truth = timed_each(lambda i: store.search(load.probes[i], 10, exact=True), queries)
    recall = recall_at_10(truth, found)
    # Search-time hnsw_ef on the same index: how recall and time trade, without a rebuild.
    swept = []
    for ef in sweep_ef:
        store.settings = tuning.model_copy(update={"hnsw_ef": ef})
        timing, results = timed_each(lambda i: store.search(load.probes[i], 10), queries)
        swept.append({"ef": ef, "recall": recall_at_10(truth, results), **asdict(timing)})
    store.settings = tuning
    points = store.count()
    store.close()
    return {
        "points": points,
        "reopen_s": reopen_s,
        "first_search_ms": first_ms,
        "exact": asdict(exact),
        "dense": asdict(dense),
        "cold": asdict(cold),
        "hybrid": asdict(hybrid),
        "recall": recall,
        "sweep": swept,
        "start_rss": started_rss,
        "serving_peak_rss": serving_peak_rss,
        "serving_peak_anon": serving_peak_anon,
        "peak_rss": peak_rss_bytes(),
    }


def recall_at_10(truth: list[list[Hit]], found: list[list[Hit]]) -> float:
    return statistics.fmean(
        len({h.chunk.id for h in a} & {h.chunk.id for h in b}) / 10
        for a, b in zip(truth, found, strict=True)
    )


# ---------------------------------------------------------------- ingest's memory


def ingest_with_stored_vectors(load: Load, size: int, scratch: Path) -> dict[str, Any]:
    """guardrag's own ingest of a corpus of about `size` chunks (files of real chunk texts),
    with the embedder's vectors replaced by stored real vectors and mixes of them: its peak
    RSS against corpus size, without embedding a million chunks."""
    from ingest.run import IngestProgress, build_ingest_parts, ingest_folder
    from rag.compose import configure_runtime
    from rag.embedder import SentenceEmbedder
    from rag.settings import load_settings

    corpus = scratch / "corpus"
    corpus.mkdir(parents=True)
    files = max(1, size // CHUNKS_PER_FILE)
    for number in range(files):
        at = number * CHUNKS_PER_FILE
        texts = [load.chunks[(at + j) % len(load.chunks)].text for j in range(CHUNKS_PER_FILE)]
        body = f"# Synthetic file {number}\n\n" + "\n\n".join(texts)
        (corpus / f"{number // 1000:04d}").mkdir(exist_ok=True)
        (corpus / f"{number // 1000:04d}" / f"file-{number:07d}.md").write_text(body)

    class StoredVectorEmbedder(SentenceEmbedder):
        """The real embedder (its tokenizer chunks the text) whose document vectors come from
        the stored real vectors and mixes of them instead of the model."""

        served = 0

        def embed_documents(
            self,
            texts: Sequence[str],
            on_progress: Callable[[int], None] | None = None,
            batches_per_report: int = 8,
            token_counts: Sequence[int] | None = None,
        ) -> np.ndarray:
            at = self.served
            self.served += len(texts)
            if on_progress is not None:
                on_progress(len(texts))
            return mixed_vectors(load.vectors, at, at + len(texts))

    settings = load_settings(data_dir=scratch / "guardrag")
    # The injection head embeds a chunk's alternate views (folded look-alikes, decoded
    # spans) with the model: embedding, which this run leaves out like the rest (it made
    # ingest about 45 chunks/s here, a million chunks six hours). The rules still scan.
    guards = settings.guards
    injection = guards.injection.model_copy(update={"head": False})
    settings = settings.model_copy(
        update={"guards": guards.model_copy(update={"injection": injection})}
    )
    configure_runtime(settings)
    parts = build_ingest_parts(settings)
    real = parts.embedder
    stored = StoredVectorEmbedder(real.name, real.path, real.query_instruction, real.batch_size)
    parts = replace(parts, embedder=stored)
    stored.tokenizer  # noqa: B018 - loads the model now, so the baseline RSS includes it
    baseline_rss = current_rss_bytes()
    anon = AnonPeak()
    started = time.perf_counter()
    trace: list[tuple[int, int]] = []

    def note(progress: IngestProgress) -> None:
        # Chunks written against the heap, every 10,000 chunks: flat if nothing accumulates.
        if progress.chunks_written >= len(trace) * 10_000 + 10_000:
            trace.append((progress.chunks_written, status_bytes("RssAnon")))
            log(f"  ingest: {trace[-1][0]:,} chunks written, anon RSS {gib(trace[-1][1])}")

    report = ingest_folder(corpus, parts, progress=note)
    seconds = time.perf_counter() - started
    parts.store.close()
    return {
        "files": files,
        "chunks": report.chunks_written,
        "seconds": seconds,
        "start_rss": baseline_rss,
        "peak_rss": peak_rss_bytes(),
        "peak_anon": anon.stop(),
        "trace": trace,
        "write_batch": settings.ingest.write_batch,
    }


# ---------------------------------------------------------------- the parent


def child(
    what: str,
    size: int,
    load_dir: Path,
    work: Path,
    out: Path,
    tuning: StoreSettings,
    sweep_ef: Sequence[int] = (),
) -> None:
    """In a child process: one size's build, serve or ingest; its figures go to `out`."""
    load = Load.read(load_dir)
    if what == "build":
        figures = build_store(load, size, work, tuning)
    elif what == "serve":
        figures = serve_store(load, work, tuning, sweep_ef)
    else:
        figures = ingest_with_stored_vectors(load, size, work)
    out.write_text(json.dumps(figures))


def in_child(
    what: str,
    size: int,
    load_dir: Path,
    work: Path,
    tuning: StoreSettings,
    sweep_ef: Sequence[int] = (),
) -> dict[str, Any]:
    out = work.parent / f"{work.name}-{what}.json"
    command = [sys.executable, "-m", "evals.bench_scale", "--child", what, str(size)]
    command += [str(load_dir), str(work), str(out), "--tuning", tuning.model_dump_json()]
    if sweep_ef:
        command += ["--sweep-ef", ",".join(str(ef) for ef in sweep_ef)]
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


@dataclass(frozen=True)
class SizeFigures:
    size: int
    build: dict[str, Any]
    serve: dict[str, Any]

    @property
    def build_s(self) -> float:
        return float(self.build["upsert_s"] + self.build["optimize_s"])

    def latency(self, kind: str) -> Latency:
        return Latency(**self.serve[kind])


def label(size: int) -> str:
    return (
        f"@{size // 1_000_000}M"
        if size >= 1_000_000 and size % 1_000_000 == 0
        else (f"@{size // 1000}k" if size >= 1000 else f"@{size}")
    )


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def size_rows(run: SizeFigures, base: SizeFigures) -> list[BenchRow]:
    at, base_at = label(run.size), label(base.size)
    dense, exact, hybrid = run.latency("dense"), run.latency("exact"), run.latency("hybrid")
    float32 = run.size * DIMENSION * 4
    serving = run.serve["serving_peak_rss"]
    return [
        BenchRow(
            f"{at} index build: upsert + optimize() vs {base_at}",
            f"{run.build['upsert_s']:.1f} + {run.build['optimize_s']:.1f} s",
            f"{base.build_s:.1f} s {base_at}",
            f"{run.build_s / base.build_s:.2f}",
        ),
        BenchRow(
            f"{at} dense HNSW p50 / p95 (first pass after reopening: p95) vs exact, same store",
            f"{dense} ({run.serve.get('cold', run.serve['dense'])['p95']:.2f})",
            f"{exact} exact",
            f"{dense.p95 / exact.p95:.3f}",
            f"p95 ≤ {DENSE_P95_MS:g} ms",
            dense.p95 <= DENSE_P95_MS,
        ),
        BenchRow(
            f"{at} hybrid (dense + BM25, RRF) p50 / p95 vs {base_at}",
            str(hybrid),
            f"{base.latency('hybrid')} {base_at}",
            f"{hybrid.p95 / base.latency('hybrid').p95:.2f}",
            f"p95 ≤ {HYBRID_P95_MS:g} ms",
            hybrid.p95 <= HYBRID_P95_MS,
        ),
        BenchRow(
            f"{at} HNSW recall@10 vs exact search ({len_queries(run)} real questions)",
            f"{run.serve['recall']:.3f}",
            "1.000 exact",
            f"{run.serve['recall']:.3f}",
            f"≥ {RECALL_FLOOR}",
            run.serve["recall"] >= RECALL_FLOOR,
        ),
        BenchRow(
            f"{at} peak RSS (anonymous part), reopen + dense and hybrid search vs {base_at}",
            f"{gib(serving)} ({gib(run.serve.get('serving_peak_anon', 0))})",
            f"{gib(base.serve['serving_peak_rss'])} {base_at}",
            f"{serving / base.serve['serving_peak_rss']:.2f}",
            f"≤ {PEAK_RSS_GIB:g} GiB",
            serving <= PEAK_RSS_GIB * GIB,
        ),
        BenchRow(
            f"{at} peak RSS, the same process after exact search too vs {base_at}",
            gib(run.serve["peak_rss"]),
            f"{gib(base.serve['peak_rss'])} {base_at}",
            f"{run.serve['peak_rss'] / base.serve['peak_rss']:.2f}",
        ),
        BenchRow(
            f"{at} peak RSS (anonymous part), build process vs the float32 vectors alone",
            f"{gib(run.build['peak_rss'])} ({gib(run.build.get('peak_anon', 0))})",
            f"{gib(float32)} vectors",
            f"{run.build['peak_rss'] / float32:.2f}",
        ),
        BenchRow(
            f"{at} size on disk vs the float32 vectors alone",
            gib(run.build["disk"]),
            f"{gib(float32)} vectors",
            f"{run.build['disk'] / float32:.2f}",
        ),
        BenchRow(
            f"{at} reopen the store (first search after it) vs {base_at}",
            f"{run.serve['reopen_s']:.2f} s ({run.serve['first_search_ms']:.0f} ms)",
            f"{base.serve['reopen_s']:.2f} s {base_at}",
            f"{run.serve['reopen_s'] / max(base.serve['reopen_s'], 1e-3):.2f}",
            f"≤ {REOPEN_S:g} s",
            run.serve["reopen_s"] <= REOPEN_S,
        ),
    ]


def sweep_rows(run: SizeFigures) -> list[BenchRow]:
    exact = run.latency("exact")
    return [
        BenchRow(
            f"  {label(run.size)} hnsw_ef={point['ef']}: recall@10, dense p50 / p95 vs exact",
            f"{point['recall']:.3f}, {Latency(point['p50'], point['p95'])}",
            f"{exact} exact",
            f"{point['p95'] / exact.p95:.3f}",
        )
        for point in run.serve.get("sweep", ())
    ]


def len_queries(run: SizeFigures) -> int:
    return int(run.serve.get("queries", 0))


def ingest_rows(runs: list[dict[str, Any]]) -> list[BenchRow]:
    base = runs[len(runs) // 2] if len(runs) > 2 else runs[0]
    rows = []
    for run in runs:
        grown = run["peak_rss"] - run["start_rss"]
        base_grown = base["peak_rss"] - base["start_rss"]
        rows.append(
            BenchRow(
                f"ingest of {run['chunks']:,} chunks ({run['files']:,} files, stored vectors "
                f"for embedding): peak RSS (growth) vs {base['chunks']:,} chunks",
                f"{gib(run['peak_rss'])} (+{gib(grown)}; anon {gib(run.get('peak_anon', 0))})",
                f"{gib(base['peak_rss'])} (+{gib(base_grown)})",
                f"{grown / max(base_grown, 1):.2f}",
            )
        )
    return rows


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.replace("_", "").split(",") if s.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evals.bench_scale", description=__doc__)
    parser.add_argument(
        "--dataset", type=Path, default=DATASET, help="folder with docs/ and questions.jsonl"
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[10_000, 100_000, 1_000_000], help="e.g. 10000,1e5"
    )
    parser.add_argument(
        "--ingest-sizes",
        type=parse_sizes,
        default=None,
        help="corpus sizes (chunks) for ingest's peak RSS; default: --sizes; '' skips it",
    )
    parser.add_argument("--queries", type=int, default=200, help="questions per figure")
    defaults = StoreSettings()
    parser.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m)
    parser.add_argument("--hnsw-ef-construct", type=int, default=defaults.hnsw_ef_construct)
    parser.add_argument("--hnsw-ef", type=int, default=defaults.hnsw_ef)
    parser.add_argument("--quantization", choices=("none", "int8"), default=defaults.quantization)
    parser.add_argument("--oversampling", type=float, default=defaults.quantization_oversampling)
    parser.add_argument(
        "--vectors-on-disk", action=argparse.BooleanOptionalAction, default=defaults.vectors_on_disk
    )
    parser.add_argument(
        "--sweep-ef",
        type=parse_sizes,
        default=[],
        help="also measure recall and time at these search hnsw_ef values, same index",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--tuning", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def tuning_of(args: argparse.Namespace) -> StoreSettings:
    if args.tuning:
        return StoreSettings.model_validate_json(args.tuning)
    return StoreSettings(
        hnsw_m=args.hnsw_m,
        hnsw_ef_construct=args.hnsw_ef_construct,
        hnsw_ef=args.hnsw_ef,
        quantization=args.quantization,
        quantization_oversampling=args.oversampling,
        vectors_on_disk=args.vectors_on_disk,
    )


def sizes_in_turn(sizes: list[int]) -> Iterator[int]:
    yield from sorted(set(sizes))


def measure(argv: Sequence[str] | None = None) -> tuple[str, list[list[BenchRow]]]:
    args = parse_args(argv)
    require_retrieval_set(args.dataset)
    tuning = tuning_of(args)
    load_at_start = os.getloadavg()[0]
    ingest_sizes = args.sizes if args.ingest_sizes is None else args.ingest_sizes
    with tempfile.TemporaryDirectory(prefix="guardrag-scale-") as tmp:
        scratch = Path(tmp)
        log(f"embedding the development set's chunks and {args.queries} questions once")
        load = build_load(args.dataset, args.queries, scratch / "load")
        load.save(scratch / "load-files")
        log(
            f"{len(load.chunks)} real chunk vectors; points past them are mixes of three "
            "(no chunk is re-embedded)"
        )
        runs = []
        for size in sizes_in_turn(args.sizes):
            work = scratch / f"store-{size}"
            log(f"{size:,} points: building ({tuning.model_dump_json()})")
            build = in_child("build", size, scratch / "load-files", work, tuning)
            log(f"{size:,} points: reopening and searching")
            serve = in_child("serve", size, scratch / "load-files", work, tuning, args.sweep_ef)
            serve["queries"] = len(load.probes)
            runs.append(SizeFigures(size, build, serve))
            log(f"{size:,} points: {json.dumps({**build, **serve})}")
            # The next size's files need the room: a 1M store is several GB.
            _remove(work)
        ingests = []
        for size in sizes_in_turn(ingest_sizes):
            log(f"ingest of about {size:,} chunks with stored vectors: peak RSS")
            work = scratch / f"ingest-{size}"
            ingests.append(in_child("ingest", size, scratch / "load-files", work, tuning))
            log(f"  {json.dumps(ingests[-1])}")
            _remove(work)
    groups = []
    if runs:
        base = next((r for r in runs if r.size == 100_000), runs[len(runs) // 2])
        groups = [size_rows(run, base) + sweep_rows(run) for run in runs]
    if ingests:
        groups.append(ingest_rows(ingests))
    title = (
        f"guardrag store at scale: {len(load.chunks)} real chunk vectors + mixes of them (not "
        f"re-embedded), {len(load.probes)} real questions; m={tuning.hnsw_m}, "
        f"ef_construct={tuning.hnsw_ef_construct}, hnsw_ef={tuning.hnsw_ef}, "
        f"quantization={tuning.quantization} (oversampling {tuning.quantization_oversampling:g}),"
        f" vectors_on_disk={tuning.vectors_on_disk}; load {load_at_start:.1f} → "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    return title, groups


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def run(argv: Sequence[str] = ()) -> list[BenchRow]:
    """As evals/bench.py's runner calls a benchmark: the rows, parsed from `argv` only."""
    _, groups = measure(list(argv))
    return [row for group in groups for row in group]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        what, size, load_dir, work, out = args.child
        figures = (Path(load_dir), Path(work), Path(out), tuning_of(args), args.sweep_ef)
        child(what, int(size), *figures)
        return
    # Imported here, not in the store's child processes: their peak RSS is the store's.
    from rich.console import Console

    from evals.bench_ingest import render

    title, groups = measure(argv)
    out = Console(width=None if Console().is_terminal else 170)
    out.print(render(groups, title))


if __name__ == "__main__":
    main()
