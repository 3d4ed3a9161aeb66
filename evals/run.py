"""One evaluation run: the chosen suites in order, recorded in the metrics schema
(evals/metrics.py), written as metrics.json, report.html and summary.md, and gated against a
baseline run when one is given."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.gate import GateResult, compare_runs
from evals.metrics import DEFAULT_ANSWERS_LIMIT, SUITES, check_run, empty_run
from evals.progress import RunProgress
from evals.suites import ROOT, SUITE_FUNCTIONS, EvalData, SharedWork
from rag.settings import Settings, load_settings


@dataclass(frozen=True)
class EvalOptions:
    suites: tuple[str, ...]
    data: Path
    out: Path
    profile: str | None = None
    limit: int | None = None
    answers_limit: int = DEFAULT_ANSWERS_LIMIT
    llamaindex: bool = True
    baseline: Path | None = None


def parse_suites(names: Sequence[str]) -> tuple[str, ...]:
    """`all`, one suite, or several (repeated or comma-separated), in the canonical order."""
    wanted = {n.strip() for name in names for n in name.split(",") if n.strip()}
    if not wanted or "all" in wanted:
        return SUITES
    unknown = wanted - set(SUITES)
    if unknown:
        raise ValueError(
            f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)} or all"
        )
    return tuple(s for s in SUITES if s in wanted)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def data_fingerprint(files: Sequence[Path], root: Path) -> str:
    """Names and sizes of the data files read: two runs on the same sets share it."""
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root) if path.is_relative_to(root) else path.name
        digest.update(f"{name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings as JSON, secrets replaced: the file may be shared or committed."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("***" if "key" in k.lower() and v else scrub(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub(settings.model_dump(mode="json"))


def models_record(settings: Settings) -> list[dict[str, Any]]:
    from rag.models import list_models, resolve_model

    models = [
        {
            "role": m.role,
            "model": m.model_id,
            "path": str(m.path) if m.path else None,
            "on_disk": m.path is not None,
        }
        for m in list_models(settings, try_load=False)
    ]
    classifier = settings.guards.injection.classifier_model
    if classifier:
        path = resolve_model(classifier, settings.models_dir)
        models.append(
            {
                "role": "injection_classifier",
                "model": classifier,
                "path": str(path) if path else None,
                "on_disk": path is not None,
            }
        )
    return models


def run_eval(options: EvalOptions, progress: RunProgress) -> dict[str, Any]:
    """Every chosen suite in a scratch data directory (the user's store is never touched);
    a suite that fails is recorded as failed with its error, and the others still run."""
    record = empty_run()
    data = EvalData(options.data)
    started = time.perf_counter()
    record["run"] = {
        "started_at": _now(),
        "suites": list(options.suites),
        "limit": options.limit,
        "answers_limit": options.answers_limit,
        "data": str(options.data),
        "data_fingerprint": data_fingerprint(data.files_used(), options.data),
        "git_commit": _git_commit(),
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_at_start": round(os.getloadavg()[0], 2),
        },
    }
    with tempfile.TemporaryDirectory(prefix="guardrag-eval-") as scratch:
        settings = load_settings(options.profile, data_dir=Path(scratch))
        record["settings"] = settings_record(settings)
        record["models"] = models_record(settings)
        work = SharedWork(
            settings, data, progress, options.limit, options.answers_limit, options.llamaindex
        )
        for name in options.suites:
            progress.note(f"[bold]{name}[/]")
            suite_started = time.perf_counter()
            try:
                result = SUITE_FUNCTIONS[name](work)
            except Exception as exc:  # noqa: BLE001 - one broken suite must not hide the rest
                progress.note(f"[red]{name} failed:[/] {type(exc).__name__}: {exc}")
                record["suites"][name] = {
                    "status": "failed",
                    "seconds": round(time.perf_counter() - suite_started, 1),
                    "error": f"{type(exc).__name__}: {exc}",
                }
                continue
            seconds = round(time.perf_counter() - suite_started, 1)
            status = "ran" if result.metrics else "unavailable"
            record["suites"][name] = {
                "status": status,
                "seconds": seconds,
                "notes": list(result.notes),
            }
            record["metrics"] |= result.metrics
            record["details"][name] = result.details
            record["unavailable"] |= result.unavailable
            progress.note(f"{name}: {status} in {seconds:.1f} s")
    record["run"]["finished_at"] = _now()
    record["run"]["seconds"] = round(time.perf_counter() - started, 1)
    record["run"]["host"]["load_at_end"] = round(os.getloadavg()[0], 2)
    return record


def load_run(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the baseline {path}: {exc}") from exc
    return check_run(data, str(path))


def gate_against(record: dict[str, Any], baseline: Path) -> GateResult:
    return compare_runs(record, load_run(baseline))
