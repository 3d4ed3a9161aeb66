"""Retrieval quality on a document-QA set: document-level hit@k and MRR, dense vs hybrid.

The set is a folder with `docs/` and `questions.jsonl` (one row per question with `question`
and `doc`, the file name holding the answer), as in ../shared/eval-data/retrieval_qa.
Run: `python -m evals.retrieval PATH [--profile P]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.run import build_ingest_parts, ingest_folder
from rag.settings import Settings, load_settings

KS = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalScores:
    mode: str
    questions: int
    hit_at: dict[int, float]
    mrr: float
    p50_ms: float
    p95_ms: float

    def as_dict(self) -> dict[str, float]:
        scores = {f"hit@{k}": round(v, 4) for k, v in self.hit_at.items()}
        return {**scores, "mrr": round(self.mrr, 4), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def evaluate(dataset: Path, settings: Settings) -> dict[str, RetrievalScores]:
    questions = [json.loads(line) for line in (dataset / "questions.jsonl").open(encoding="utf-8")]
    parts = build_ingest_parts(settings)
    report = ingest_folder(dataset / "docs", parts)
    if report.failed:
        print(f"warning: {len(report.failed)} file(s) failed: {report.failed}", file=sys.stderr)
    embedder, store = parts.embedder, parts.store
    results = {}
    for mode in ("dense", "hybrid"):
        ranks: list[int | None] = []
        latencies: list[float] = []
        for row in questions:
            started = time.perf_counter()
            vector = embedder.embed_query(row["question"])
            hits = store.search(vector, max(KS) * 4, row["question"] if mode == "hybrid" else None)
            latencies.append((time.perf_counter() - started) * 1000)
            docs = list(dict.fromkeys(Path(h.chunk.path).name for h in hits))
            ranks.append(docs.index(row["doc"]) + 1 if row["doc"] in docs else None)
        results[mode] = RetrievalScores(
            mode=mode,
            questions=len(questions),
            hit_at={k: sum(1 for r in ranks if r is not None and r <= k) / len(ranks) for k in KS},
            mrr=statistics.fmean(1 / r if r else 0.0 for r in ranks),
            p50_ms=_percentile(latencies, 0.5),
            p95_ms=_percentile(latencies, 0.95),
        )
    store.close()
    return results


def main(argv: list[str]) -> None:
    dataset = Path(argv[0]) if argv else Path("../shared/eval-data/retrieval_qa")
    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(profile, data_dir=Path(data_dir))
        for mode, scores in evaluate(dataset, settings).items():
            print(json.dumps({"mode": mode, "questions": scores.questions, **scores.as_dict()}))


if __name__ == "__main__":
    main(sys.argv[1:])
