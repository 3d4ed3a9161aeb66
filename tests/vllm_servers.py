"""Real vLLM OpenAI servers on loopback for tests: started on free ports, stopped (or killed
mid-request) with their whole process group, so no EngineCore outlives a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class VLLMServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root}/v1"

    def kill(self) -> None:
        """SIGKILL the server and its engine: a crashed node, not a graceful stop."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def capped_threads() -> dict[str, str]:
    """The environment a test server runs in: its front end's torch on one thread and its
    engine pinned to one core (the last, which vLLM's automatic binding picks on 2 cores), so
    its speed does not depend on the machine's core count (tests/conftest.py sets the same)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get(
            "VLLM_CPU_OMP_THREADS_BIND", str((os.cpu_count() or 1) - 1)
        ),
    }


def start_vllm_servers(
    model_dir: Path,
    served_name: str,
    count: int,
    log_dir: Path,
    kv_cache_mib: int = 256,
    max_model_len: int = 2048,
) -> list[VLLMServer]:
    """Start `count` servers at once (they load side by side) and wait until all are healthy."""
    servers = []
    for index in range(count):
        port = free_port()
        log_path = log_dir / f"vllm-{served_name}-{index}.log"
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(max_model_len),
            "--enforce-eager",
            # An explicit KV cache: enough for these tests, and no 92 %-free-RAM check.
            "--kv-cache-memory-bytes",
            str(kv_cache_mib * 2**20),
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=capped_threads(),
            )
        servers.append(VLLMServer(process, port, log_path))
    deadline = time.monotonic() + 240
    try:
        for server in servers:
            while True:
                if server.process.poll() is not None:
                    raise RuntimeError(
                        f"vLLM server exited ({server.process.returncode}); log: "
                        f"{server.log_path.read_text()[-2000:]}"
                    )
                try:
                    if httpx.get(f"{server.root}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM server on port {server.port} did not start")
                time.sleep(0.5)
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers
