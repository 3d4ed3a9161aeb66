"""Stock LlamaIndex on the same files with the same embedder, the baseline the retrieval and
latency suites show beside guardrag. It runs in a child process, because LlamaIndex cannot be
installed into .venv (evals/bench-llamaindex.txt): the child gets its folder on PYTHONPATH.

Child: `python -m evals.llamaindex_baseline DATASET OUT.json [--limit N] [--profile P]`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evals.retrieval import DEPTH, QAQuestion, load_questions, rank_documents
from evals.scoring import RankedQuestion

ROOT = Path(__file__).resolve().parent.parent
# Where `make bench-ingest` installs it (Makefile: LLAMAINDEX_DIR := .venv/bench-llamaindex).
LLAMAINDEX_DIR = Path(sys.prefix) / "bench-llamaindex"


@dataclass(frozen=True)
class BaselineRun:
    files: int
    nodes: int
    ingest_seconds: float
    ranked: tuple[RankedQuestion, ...]

    @property
    def chunks_per_s(self) -> float:
        return self.nodes / self.ingest_seconds if self.ingest_seconds else 0.0


@dataclass(frozen=True)
class BaselineMissing:
    reason: str


def llamaindex_ranked(index: Any, questions: Sequence[QAQuestion]) -> list[RankedQuestion]:
    """Each question through the stock retriever: nodes ranked as guardrag's chunks are."""
    retriever = index.as_retriever(similarity_top_k=DEPTH)
    ranked = []
    for q in questions:
        started = time.perf_counter()
        nodes = retriever.retrieve(q.question)
        ms = (time.perf_counter() - started) * 1000
        names = [n.node.metadata["file_name"] for n in nodes]
        outcome = rank_documents(names, [n.node.get_content() for n in nodes], q)
        ranked.append(RankedQuestion(outcome.doc_rank, outcome.answer_rank, ms))
    return ranked


def run_in_child(
    dataset: Path, limit_ids: Sequence[str], profile: str | None, timeout_s: float = 900
) -> BaselineRun | BaselineMissing:
    """Run the baseline in a child interpreter with LlamaIndex's folder on its path."""
    path_parts = [str(LLAMAINDEX_DIR)] if LLAMAINDEX_DIR.is_dir() else []
    environment = dict(os.environ)
    if path_parts:
        environment["PYTHONPATH"] = os.pathsep.join(
            [*path_parts, environment.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix="guardrag-llamaindex-") as scratch:
        out = Path(scratch) / "baseline.json"
        ids = Path(scratch) / "ids.json"
        ids.write_text(json.dumps(list(limit_ids)))
        command = [sys.executable, "-m", "evals.llamaindex_baseline", str(dataset), str(out)]
        command += ["--ids", str(ids)] + (["--profile", profile] if profile else [])
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode == 3:
            return BaselineMissing(done.stdout.strip())
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            return BaselineMissing(f"the baseline run failed (exit {done.returncode}): {tail}")
        data = json.loads(out.read_text())
    return BaselineRun(
        files=data["files"],
        nodes=data["nodes"],
        ingest_seconds=data["ingest_seconds"],
        ranked=tuple(RankedQuestion(**row) for row in data["ranked"]),
    )


def main(argv: list[str]) -> int:
    from evals.bench_ingest import ingest_with_llamaindex, llamaindex_missing

    dataset, out = Path(argv[0]), Path(argv[1])
    missing = llamaindex_missing()
    if missing:
        print(
            f"stock LlamaIndex is not installed (not importable: {', '.join(missing)}); "
            f"`make bench-ingest` installs it into {LLAMAINDEX_DIR}"
        )
        return 3
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from rag.compose import configure_runtime
    from rag.models import resolve_model
    from rag.settings import load_settings

    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    wanted = set(json.loads(Path(argv[argv.index("--ids") + 1]).read_text()))
    questions = [q for q in load_questions(dataset) if q.id in wanted]
    with tempfile.TemporaryDirectory(prefix="guardrag-llamaindex-") as scratch:
        settings = load_settings(profile, data_dir=Path(scratch))
        configure_runtime(settings)
        model = resolve_model(settings.embedder.model, settings.models_dir)
        if model is None:
            print(f"the embedder {settings.embedder.model} is not on disk")
            return 3
        embed_model = HuggingFaceEmbedding(model_name=str(model), device="cpu")
        tokenizer = embed_model._model.tokenizer
        stock = ingest_with_llamaindex(dataset / "docs", embed_model, Path(scratch), tokenizer)
        ranked = llamaindex_ranked(stock.index, questions)
        stock.client.close()
    result = {
        "files": stock.files,
        "nodes": stock.nodes,
        "ingest_seconds": stock.seconds,
        "ranked": [asdict(r) for r in ranked],
    }
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
