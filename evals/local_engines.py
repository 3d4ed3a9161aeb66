"""PostgreSQL and Redis as the deployment runs them, started on loopback in a temporary
directory from Debian's packages (`apt-get install -y postgresql redis-server`): the shared
stores of issue 19, for evals/bench_state.py and the tests (which import it from here: the
benchmark is product code and must not import from tests/)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis

INSTALL = "apt-get install -y postgresql redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EngineMissing(RuntimeError):
    """PostgreSQL or Redis is not installed here; the message says how to install it."""


def _postgres_binary(name: str) -> str:
    # Debian keeps initdb and pg_ctl under the major version's folder, off the PATH.
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise EngineMissing(f"PostgreSQL's {name} is not installed: {INSTALL}")
    return found


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs the tests as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server(durable: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port; yields the URL of its `postgres`
    database for user `guardrag` (trust authentication: loopback, tests only). Not durable
    (fsync off) unless asked: tests need no crash safety, benchmarks compare with SQLite's."""
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    # Not under pytest's tmp_path: its parents are root's alone, and the server runs as
    # the postgres user when the tests run as root.
    workdir = Path(tempfile.mkdtemp(prefix="guardrag-postgres-"))
    data = workdir / "data"
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    port = free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(
            _as_postgres_user(
                [
                    initdb,
                    "-D",
                    str(data),
                    "-U",
                    "guardrag",
                    "--auth=trust",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ]
            ),
            **run,  # type: ignore[call-overload]
        )
        options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off"
        subprocess.run(
            _as_postgres_user(
                [pg_ctl, "start", "-D", str(data), "-o", options, "-l", str(workdir / "log")]
            ),
            **run,  # type: ignore[call-overload]
        )
        yield f"postgresql://guardrag@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(workdir, ignore_errors=True)


def new_database(server_url: str) -> str:
    """A database of its own on the server, so each test starts from an empty schema."""
    name = f"history_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis server on a free loopback port, persisting nothing; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise EngineMissing(f"redis-server is not installed: {INSTALL}")
    workdir = Path(tempfile.mkdtemp(prefix="guardrag-redis-"))
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        client.close()
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
