"""Shared state across guardrag processes (issue 19) on real engines: Redis for the answer
cache and the API's rate limits, PostgreSQL for history, started from Debian's packages on
loopback. Without them installed the tests skip and say how to install them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import redis
import yaml
from limits import parse as parse_rate
from limits.strategies import MovingWindowRateLimiter

from evals.local_engines import EngineMissing, new_database, postgres_server, redis_server
from guardrails.audit import AuditLog, AuditRecord
from guardrails.verdict import Verdict
from rag.cache import AnswerCache, CachedAnswer, CacheKey, RedisAnswerCache
from rag.compose import build_cache
from rag.schema import Citation, Route
from rag.settings import Settings, load_settings
from rag.shared_state import SharedStateError, rate_limit_storage, redis_client
from tests.conftest import EXAMPLES, ROOT, local_settings
from tests.gradio_wire import GradioWire
from tests.guardrag_processes import run_cli
from tests.vllm_servers import free_port
from ui.history import HistoryStore

DEPLOY = ROOT / "deploy"
PASSAGE = "Ada Lovelace (ada@example.org) approves remote work."


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    try:
        with redis_server() as url:
            yield url
    except EngineMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    try:
        with postgres_server() as url:
            yield url
    except EngineMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture
def shared_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)
    client.flushdb()
    yield client
    client.close()


def _key(user: str, question: str = "how many remote days") -> CacheKey:
    return CacheKey(user, question, "document_qa", "smollm2", ("chunk-a", "chunk-b"), "ctx")


def _answer(text: str = "Three days [1].") -> CachedAnswer:
    return CachedAnswer(
        text=text,
        route=Route("document_qa", "smollm2", 0.9, "keywords"),
        citations=(Citation(1, "chunk-a", "remote.md", "Remote work", None, 0.03, PASSAGE),),
        output_verdict=Verdict("llama_guard", "allow", 0.01, (), "safe", 12.0, "allow", "p"),
        stored_at=time.time(),
    )


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_an_answer_cached_by_one_process_is_an_exact_hit_in_another(
    shared_redis: redis.Redis,
) -> None:
    one = RedisAnswerCache(shared_redis, ttl_s=60, semantic_threshold=None)
    other = RedisAnswerCache(shared_redis, ttl_s=60, semantic_threshold=None)
    assert other.get(_key("alice"), None) is None
    one.put(_key("alice"), None, _answer())
    hit = other.get(_key("alice"), None)
    assert hit is not None and hit.kind == "exact"
    assert hit.answer.text == "Three days [1]." and hit.answer.output_verdict.outcome == "allow"
    assert hit.answer.route.model == "smollm2" and hit.answer.citations[0].chunk_id == "chunk-a"
    assert other.get(_key("bob"), None) is None, "entries are per user"
    assert len(other) == 1


def test_redis_holds_no_user_name_question_or_passage(shared_redis: redis.Redis) -> None:
    cache = RedisAnswerCache(shared_redis, ttl_s=60, semantic_threshold=0.9)
    cache.put(_key("alice.smith@example.org"), _unit(1, 0, 0), _answer())
    stored = b""
    for key in shared_redis.scan_iter():
        stored += key
        kind = shared_redis.type(key)
        if kind == b"string":
            stored += shared_redis.get(key) or b""
        elif kind == b"set":
            stored += b"".join(shared_redis.smembers(key))
        elif kind == b"hash":
            stored += b"".join(k + v for k, v in shared_redis.hgetall(key).items())
    assert stored, "the entry was written"
    for secret in (b"alice", b"example.org", b"remote days", b"Lovelace", b"approves"):
        assert secret not in stored


def test_entries_expire_in_redis_after_the_ttl(shared_redis: redis.Redis) -> None:
    cache = RedisAnswerCache(shared_redis, ttl_s=1.0, semantic_threshold=0.9)
    cache.put(_key("alice"), _unit(1, 0, 0), _answer())
    assert cache.get(_key("alice"), None) is not None
    time.sleep(1.5)
    assert cache.get(_key("alice"), None) is None
    assert cache.get(_key("alice", "other words"), _unit(1, 0, 0)) is None
    assert list(shared_redis.scan_iter()) == [], "the scope and user indexes expire too"


def test_a_paraphrase_is_a_semantic_hit_in_another_process_within_its_scope(
    shared_redis: redis.Redis,
) -> None:
    one = RedisAnswerCache(shared_redis, ttl_s=60, semantic_threshold=0.95)
    other = RedisAnswerCache(shared_redis, ttl_s=60, semantic_threshold=0.95)
    one.put(_key("alice"), _unit(1, 0.1, 0), _answer("Paraphrased."))
    one.put(_key("alice", "unrelated"), _unit(0, 0, 1), _answer("Unrelated."))
    hit = other.get(_key("alice", "remote days how many"), _unit(1, 0.12, 0))
    assert hit is not None and hit.kind == "semantic" and hit.similarity > 0.99
    assert hit.answer.text == "Paraphrased."
    assert other.get(_key("alice", "something else"), _unit(0, 1, 0)) is None
    assert other.get(_key("bob", "remote days how many"), _unit(1, 0.12, 0)) is None


def test_clearing_a_user_removes_only_their_entries_everywhere(
    shared_redis: redis.Redis,
) -> None:
    one = RedisAnswerCache(shared_redis, ttl_s=60, semantic_threshold=0.9)
    other = RedisAnswerCache(shared_redis, ttl_s=60, semantic_threshold=0.9)
    one.put(_key("alice"), _unit(1, 0, 0), _answer())
    one.put(_key("alice", "second"), None, _answer())
    one.put(_key("bob"), _unit(1, 0, 0), _answer())
    assert other.clear_user("alice") == 2
    assert one.get(_key("alice"), _unit(1, 0, 0)) is None
    assert one.get(_key("bob"), None) is not None and len(one) == 1


def test_a_redis_gone_mid_request_is_a_miss_not_a_failure(redis_url: str) -> None:
    cache = RedisAnswerCache(redis.Redis(port=free_port(), socket_timeout=1), 60, 0.9)
    assert cache.get(_key("alice"), _unit(1, 0, 0)) is None
    cache.put(_key("alice"), _unit(1, 0, 0), _answer())  # logged, not raised


def test_the_cache_setting_chooses_redis_and_a_wrong_url_fails_the_start(
    redis_url: str, tmp_path: Path
) -> None:
    assert type(build_cache(local_settings(tmp_path))) is AnswerCache
    shared = build_cache(local_settings(tmp_path, cache={"url": redis_url}))
    assert isinstance(shared, RedisAnswerCache)
    wrong = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(SharedStateError, match=r"cache\.url") as refused:
        build_cache(local_settings(tmp_path, cache={"url": wrong}))
    assert "hunter2" not in str(refused.value)


def test_a_keys_rate_is_spent_across_processes_sharing_redis(
    redis_url: str, shared_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path, api={"rate_limit_storage": redis_url})
    rate = parse_rate("5/minute")
    one = MovingWindowRateLimiter(rate_limit_storage(settings))
    other = MovingWindowRateLimiter(rate_limit_storage(settings))
    spent = [one.hit(rate, "api:key"), other.hit(rate, "api:key"), one.hit(rate, "api:key")]
    spent += [other.hit(rate, "api:key"), one.hit(rate, "api:key")]
    assert spent == [True] * 5
    assert not other.hit(rate, "api:key") and not one.hit(rate, "api:key")
    assert one.hit(rate, "api:another-key")
    # The in-process default counts per process: each grants the rate again.
    local = local_settings(tmp_path)
    first = MovingWindowRateLimiter(rate_limit_storage(local))
    second = MovingWindowRateLimiter(rate_limit_storage(local))
    assert all(first.hit(rate, "k") for _ in range(5)) and second.hit(rate, "k")


def test_an_unreachable_rate_limit_store_fails_the_start_without_its_password(
    tmp_path: Path,
) -> None:
    wrong = f"redis://:hunter2@127.0.0.1:{free_port()}/1"
    with pytest.raises(SharedStateError, match=r"api\.rate_limit_storage") as refused:
        rate_limit_storage(local_settings(tmp_path, api={"rate_limit_storage": wrong}))
    assert "hunter2" not in str(refused.value)
    with pytest.raises(SharedStateError, match="not usable"):
        rate_limit_storage(local_settings(tmp_path, api={"rate_limit_storage": "nosuch://x"}))


def test_an_audit_line_goes_to_the_file_and_as_the_same_json_to_the_pods_stdout(
    tmp_path: Path,
) -> None:
    echoed = io.StringIO()
    audit = AuditLog(tmp_path / "audit.jsonl", echo_to=echoed)
    verdict = Verdict("pii", "redact", 0.9, ("PERSON",), "1 finding", 3.0, "redact", "p")
    record = AuditRecord(
        "r1",
        "2026-12-06T21:00:00",
        "cluster",
        "alice",
        42,
        "answered",
        (verdict,),
        None,
        ("chunk-a",),
        {"total": 120.0},
    )
    audit.write(record)
    audit.write(record)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert echoed.getvalue().splitlines() == lines and len(lines) == 2
    parsed = json.loads(lines[0])
    assert parsed["request_id"] == "r1" and parsed["verdicts"][0]["guard"] == "pii"
    assert "alice" not in lines[0]


# ---- deploy/: the shared stores named, the sessions pinned -----------------------------------


def _deploy_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_the_cluster_profile_points_at_the_charts_and_compose_services_it_names() -> None:
    cluster = load_settings("cluster")
    postgres_values = yaml.safe_load((DEPLOY / "postgresql-values.yaml").read_text())
    redis_values = yaml.safe_load((DEPLOY / "redis-values.yaml").read_text())
    on_kubernetes = {
        postgres_values["fullnameOverride"]: postgres_values["service"]["ports"]["postgresql"],
        f"{redis_values['fullnameOverride']}-master": redis_values["master"]["service"]["ports"][
            "redis"
        ],
    }
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    in_compose: dict[str, set[int]] = {}
    for name, service in compose.items():
        aliases = service.get("networks", {}).get("default", {}).get("aliases", [])
        for host in (name, *aliases):
            in_compose.setdefault(host, set()).update(int(p) for p in service.get("expose", []))
    urls = [str(cluster.history_path), cluster.cache.url, cluster.api.rate_limit_storage]
    assert urls[0].startswith("postgresql://") and all(u and "redis://" in u for u in urls[1:])
    for url in urls:
        parts = urlsplit(str(url))
        assert parts.password is None, "passwords come from the deployment's secrets"
        assert on_kubernetes.get(parts.hostname or "") == parts.port, url
        assert parts.port in in_compose.get(parts.hostname or "", set()), url
    assert {"postgresql", "redis"} <= set(compose["guardrag"]["depends_on"])


def test_every_pod_gets_the_shared_store_urls_and_a_user_stays_on_one_pod() -> None:
    docs = _deploy_docs()
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "guardrag"
    ]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in (
        "GUARDRAG_HISTORY__URL",
        "GUARDRAG_CACHE__URL",
        "GUARDRAG_API__RATE_LIMIT_STORAGE",
    ):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "guardrag-shared-state"
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "guardrag"]
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "guardrag"


# ---- two `guardrag serve` processes sharing one PostgreSQL and one Redis ---------------------

HEADER = "X-Forwarded-User"
RATE_KEY = "shared-rate-key"
CACHE_KEY = "shared-cache-key"
QUESTION = "What is the minimum password length?"


@dataclass(frozen=True)
class Pod:
    """One `guardrag serve` process, as one pod of a deployment."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def as_user(self, name: str) -> GradioWire:
        wire = GradioWire(f"{self.url}/chat")
        wire.http.headers[HEADER] = name
        return wire


@dataclass(frozen=True)
class TwoPods:
    first: Pod
    second: Pod
    history_url: str


def _start_pod(env: dict[str, str], log: Path) -> Pod:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ui.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        # A group of its own: the pod's vLLM engine processes die with it, as a pod's
        # container takes every process with it.
        start_new_session=True,
    )
    return Pod(f"http://127.0.0.1:{port}", process, log)


def _kill_pod(pod: Pod) -> None:
    """SIGKILL to the pod's whole process group: no shutdown hook runs anywhere in it (the
    serve process alone would leave its vLLM engine and worker running, orphaned)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pod.process.pid, signal.SIGKILL)
    pod.process.wait()


def _wait_until_serving(pod: Pod) -> None:
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and pod.process.poll() is None:
        try:
            if httpx.get(f"{pod.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"guardrag serve did not start: {pod.log.read_text()[-3000:]}")


def _stop(pod: Pod) -> None:
    if pod.process.poll() is None:
        pod.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            pod.process.wait(timeout=60)
    # Whatever of its group is left (its engine, after a kill of the serve process alone).
    _kill_pod(pod)


@pytest.fixture(scope="module")
def two_pods(
    provisioned: Settings,
    postgres_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwoPods]:
    history_url = new_database(postgres_url)
    redis.Redis.from_url(redis_url).flushall()
    first_data = tmp_path_factory.mktemp("pod-a")
    shared = {
        **os.environ,
        "GUARDRAG_CHAT__TRUSTED_HEADER": HEADER,
        "GUARDRAG_API__KEYS": json.dumps([RATE_KEY, CACHE_KEY]),
        "GUARDRAG_API__RATE_LIMIT": "5/minute",
        "GUARDRAG_HISTORY__URL": history_url,
        "GUARDRAG_CACHE__URL": redis_url.rsplit("/", 1)[0] + "/0",
        "GUARDRAG_API__RATE_LIMIT_STORAGE": redis_url.rsplit("/", 1)[0] + "/1",
        "COLUMNS": "200",
    }
    run_cli(["ingest", str(EXAMPLES)], {**shared, "GUARDRAG_DATA_DIR": str(first_data)})
    # Each pod has its own copy of the same ingest (chunk ids are content hashes, so both
    # retrieve the same ids), as pods share one Qdrant server in a cluster.
    second_data = tmp_path_factory.mktemp("pod-b") / "data"
    shutil.copytree(first_data, second_data)
    pods = []
    for name, data in (("a", first_data), ("b", second_data)):
        gradio = tmp_path_factory.mktemp(f"gradio-{name}")
        env = {**shared, "GUARDRAG_DATA_DIR": str(data), "GRADIO_TEMP_DIR": str(gradio)}
        pods.append(_start_pod(env, data.parent / f"serve-{name}.log"))
    try:
        for pod in pods:
            _wait_until_serving(pod)
        yield TwoPods(pods[0], pods[1], history_url)
    finally:
        for pod in pods:
            _stop(pod)


def _conversation_titles(wire: GradioWire) -> str:
    page = wire.call("fill_page_for_user", [])
    assert page.success, page.error
    return json.dumps(page.outputs[1])


def _page_inputs(wire: GradioWire, api_name: str) -> list[Any]:
    config = wire.config()
    kinds = {c["id"]: c.get("type") for c in config["components"]}
    (dependency,) = [d for d in config["dependencies"] if d.get("api_name") == api_name]
    sent = {"chatbot": [], "dropdown": "auto (router)", "slider": 4}
    return [sent.get(kinds[i]) for i in dependency["inputs"]]


def _ask(pod: Pod, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{pod.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=300,
    )


@pytest.mark.slow
def test_a_conversation_written_through_one_pod_is_listed_by_the_other(
    two_pods: TwoPods,
) -> None:
    alice = two_pods.first.as_user("alice")
    assert alice.call("take_question", ["Which title will the other pod list?"]).success
    answered = alice.call("stream_answer", _page_inputs(alice, "stream_answer"))
    assert answered.success, answered.error
    listed = _conversation_titles(two_pods.second.as_user("alice"))
    assert "Which title will the other pod list?" in listed
    assert "Which title" not in _conversation_titles(two_pods.second.as_user("bob"))


@pytest.mark.slow
def test_a_keys_rate_limit_is_spent_across_both_pods(two_pods: TwoPods) -> None:
    # An empty body is refused (400) after the key's allowance is spent: no model runs.
    spent = [
        _ask(pod, RATE_KEY, {})
        for pod in (two_pods.first, two_pods.second, two_pods.first, two_pods.second)
    ]
    spent.append(_ask(two_pods.first, RATE_KEY, {}))
    assert [r.status_code for r in spent] == [400] * 5
    refused = _ask(two_pods.second, RATE_KEY, {})
    assert refused.status_code == 429, "the second pod counts the first pod's requests"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert _ask(two_pods.second, CACHE_KEY, {}).status_code == 400, "another key is not spent"


@pytest.mark.slow
def test_an_answer_cached_by_one_pod_is_a_hit_on_the_other(two_pods: TwoPods) -> None:
    body = {"model": "guardrag", "messages": [{"role": "user", "content": QUESTION}]}
    first = _ask(two_pods.first, CACHE_KEY, body)
    assert first.status_code == 200, first.text
    stages = {s["name"]: s for s in first.json()["guardrag"]["stages"]}
    assert stages["cache"]["detail"] == "miss" and "generate" in stages
    again = _ask(two_pods.second, CACHE_KEY, body)
    assert again.status_code == 200, again.text
    stages = {s["name"]: s for s in again.json()["guardrag"]["stages"]}
    assert stages["cache"]["detail"].startswith("hit: exact"), stages["cache"]
    assert "generate" not in stages
    text = again.json()["choices"][0]["message"]["content"]
    assert text == first.json()["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_killing_one_pod_loses_nothing_it_wrote(two_pods: TwoPods) -> None:
    carol = two_pods.first.as_user("carol")
    assert carol.call("take_question", ["Written just before the kill?"]).success
    assert carol.call("stream_answer", _page_inputs(carol, "stream_answer")).success
    _kill_pod(two_pods.first)  # SIGKILL: no shutdown hook runs
    two_pods.first.process.wait(timeout=30)

    assert "Written just before the kill?" in _conversation_titles(two_pods.second.as_user("carol"))
    history = HistoryStore(two_pods.history_url)
    (conversation,) = history.conversations("carol")
    roles = [t.role for t in history.turns("carol", conversation.id)]
    history.close()
    assert roles == ["user", "assistant"], "both turns were committed before the answer ended"
    body = {"model": "guardrag", "messages": [{"role": "user", "content": QUESTION}]}
    still = _ask(two_pods.second, CACHE_KEY, body)
    assert still.status_code == 200
    cache = {s["name"]: s for s in still.json()["guardrag"]["stages"]}["cache"]
    assert cache["detail"].startswith("hit: exact"), "the dead pod's cached answer survives"
    assert _ask(two_pods.second, RATE_KEY, {}).status_code == 429, "and so do its counts"


def test_the_cluster_profile_echoes_audit_lines_to_stdout_and_the_laptop_does_not(
    tmp_path: Path,
) -> None:
    from rag.compose import build_audit

    cluster = build_audit(load_settings("cluster", data_dir=tmp_path))
    local = build_audit(local_settings(tmp_path))
    assert local.echo_to is None
    assert cluster.echo_to is sys.stdout
