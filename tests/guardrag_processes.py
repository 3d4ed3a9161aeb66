"""`guardrag` run as a user runs it, in processes of its own: a CLI command to its end, or a
server (`chat`, `serve`) until it answers on its port and, afterwards, stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.vllm_servers import free_port


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One `guardrag` command to its end; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


@contextmanager
def guardrag_server(
    command: str, env: dict[str, str], log: Path, ready_path: str = "/"
) -> Iterator[str]:
    """`guardrag <command>` on a free loopback port, its output in `log`; yields its URL once
    `ready_path` answers (models load first: up to 300 s), and stops it afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", command, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None:
            try:
                httpx.get(f"{url}{ready_path}", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(1)
        assert server.poll() is None, f"guardrag {command} exited: {log.read_text()[-3000:]}"
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
