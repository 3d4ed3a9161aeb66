"""The deploy files: each valid against its schema, offline (kubernetes-validate's strict
Kubernetes schemas, check-jsonschema's compose spec, hadolint), and each URL of the cluster
profile served under that name, port and model id on Kubernetes and in docker-compose."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from rag.models import model_slug
from rag.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
QDRANT_VALUES = DEPLOY / "qdrant-values.yaml"
VENV_BIN = Path(sys.executable).parent

# The oldest Kubernetes the manifests promise to run on, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
VLLM_IMAGE = "vllm/vllm-openai:"
GUARDRAG_COMMAND = ["guardrag", "serve", "--host", "0.0.0.0", "--port", "8080"]
# Compose durations are Go durations ("15s", "1m30s"); the compose schema only says "string".
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")

Doc = dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    path: Path
    doc: Doc

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(K8S)}:{self.doc['kind']}/{self.doc['metadata']['name']}"


@dataclass(frozen=True)
class Endpoint:
    """One server the cluster profile reaches: where it says so, host, port, model id."""

    setting: str
    host: str
    port: int
    model: str | None


def load_manifests() -> list[Manifest]:
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append(Manifest(path, doc))
    return found


MANIFESTS = load_manifests()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Settings]:
    # The profile file alone: a GUARDRAG_… variable in the caller's shell must not move a URL.
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("GUARDRAG_")]:
            patch.delenv(name)
        yield load_settings("cluster")


@pytest.fixture(scope="module")
def compose() -> Doc:
    loaded: Doc = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def profile_endpoints(settings: Settings) -> list[Endpoint]:
    named: list[tuple[str, str, str | None]] = []
    for name, endpoint in settings.generation.models.items():
        named += [(f"generation.models.{name}.urls", url, endpoint.model) for url in endpoint.urls]
    output = settings.guards.output
    named += [("guards.output.urls", url, output.model) for url in output.urls]
    if settings.store.url:
        named.append(("store.url", settings.store.url, None))
    endpoints = []
    for setting, url, model in named:
        parts = urlsplit(url)
        assert parts.hostname, f"{setting}: {url} has no host"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        endpoints.append(Endpoint(setting, parts.hostname, port, model))
    return endpoints


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in a command line, None when absent."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def of_kind(kind: str) -> list[Doc]:
    return [m.doc for m in MANIFESTS if m.doc["kind"] == kind]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def workload_behind(service: Doc) -> Doc:
    selector = service["spec"]["selector"]
    matches = [
        d
        for d in of_kind("Deployment")
        if selects(selector, d["spec"]["template"]["metadata"]["labels"])
    ]
    assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)}"
    return matches[0]


def container_args(container: Doc) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def vllm_containers() -> list[tuple[str, Doc]]:
    return [
        (d["metadata"]["name"], c)
        for d in of_kind("Deployment")
        for c in pod_spec(d)["containers"]
        if c["image"].startswith(VLLM_IMAGE)
    ]


def qdrant_chart_service() -> tuple[str, set[int]]:
    """The Service the official Qdrant chart creates from our values: its name and ports."""
    values = yaml.safe_load(QDRANT_VALUES.read_text())
    return values["fullnameOverride"], {p["port"] for p in values["service"]["ports"]}


def kubernetes_services() -> dict[str, set[int]]:
    services = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in of_kind("Service")
    }
    name, ports = qdrant_chart_service()
    services[name] = ports
    return services


def compose_ports(service: Doc) -> set[int]:
    """Ports a compose service's container listens on: vLLM's --port, `expose`, `ports`."""
    listening = {int(p) for p in service.get("expose", [])}
    listening |= {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    command = service.get("command", [])
    port = flag([str(a) for a in command], "--port") if isinstance(command, list) else None
    if port is not None:
        listening.add(int(port))
    return listening


# Schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.label)
def test_manifest_is_valid_kubernetes_with_no_unknown_field(
    manifest: Manifest, version: str
) -> None:
    # strict: every object in the strict schemas forbids additional properties.
    kubernetes_validate.validate(manifest.doc, version, strict=True)


def test_validator_rejects_a_misspelled_field_and_an_unknown_kind() -> None:
    deployment = copy.deepcopy(of_kind("Deployment")[0])
    container = pod_spec(deployment)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    deployment["kind"] = "Deploymnet"
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_beside_it() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    beside = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == beside


def test_kustomize_renders_valid_objects_in_one_namespace() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on this machine")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    listed = {(m.doc["kind"], m.doc["metadata"]["name"]) for m in MANIFESTS if m.path.parent == K8S}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == listed
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "guardrag", doc["metadata"]["name"]


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid_compose_spec() -> None:
    result = check_compose_spec(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validator_rejects_a_misspelled_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("healthcheck:", "healthchek:", 1))
    result = check_compose_spec(broken)
    assert result.returncode != 0
    assert "healthchek" in result.stdout


def test_compose_healthcheck_durations_are_go_durations(compose: Doc) -> None:
    for name, service in compose["services"].items():
        for key in ("interval", "timeout", "start_period"):
            value = service["healthcheck"].get(key)
            assert value is None or GO_DURATION.match(value), f"{name}.healthcheck.{key}: {value}"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The cluster profile against the files --------------------------------------------------


def test_every_profile_url_is_a_kubernetes_service_on_its_port(cluster: Settings) -> None:
    services = kubernetes_services()
    for endpoint in profile_endpoints(cluster):
        assert endpoint.host in services, f"{endpoint.setting}: no Service {endpoint.host}"
        assert endpoint.port in services[endpoint.host], endpoint


def test_every_service_reaches_a_container_listening_on_its_port() -> None:
    for service in of_kind("Service"):
        containers = pod_spec(workload_behind(service))["containers"]
        named = {p.get("name"): p["containerPort"] for c in containers for p in c["ports"]}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            container_port = named[target] if isinstance(target, str) else target
            assert container_port in named.values(), (service["metadata"]["name"], target)
            for container in containers:
                listens = flag(container_args(container), "--port")
                assert listens is None or int(listens) == container_port


def test_every_profile_url_is_a_compose_service_on_its_port(
    cluster: Settings, compose: Doc
) -> None:
    for endpoint in profile_endpoints(cluster):
        service = compose["services"].get(endpoint.host)
        assert service is not None, f"{endpoint.setting}: no compose service {endpoint.host}"
        assert endpoint.port in compose_ports(service), endpoint


def test_vllm_deployments_serve_the_profile_model_ids_from_their_weights(
    cluster: Settings,
) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    served = set()
    for endpoint in profile_endpoints(cluster):
        if endpoint.model is None:
            continue
        deployment = workload_behind(services[endpoint.host])
        (container,) = [
            c for c in pod_spec(deployment)["containers"] if c["image"].startswith(VLLM_IMAGE)
        ]
        args = container_args(container)
        assert flag(args, "--served-model-name") == endpoint.model, endpoint
        weights = f"/models/{model_slug(endpoint.model)}"
        assert flag(args, "--model") == weights, endpoint
        waits = [" ".join(c["command"]) for c in pod_spec(deployment).get("initContainers", [])]
        assert all(weights in w for w in waits), endpoint
        served.add(deployment["metadata"]["name"])
    # And no vLLM server runs that the profile does not use.
    unused = {name for name, _ in vllm_containers()} - served
    assert not unused, f"vLLM Deployments no profile URL reaches: {sorted(unused)}"


def test_compose_vllm_servers_serve_the_profile_model_ids(cluster: Settings, compose: Doc) -> None:
    for endpoint in profile_endpoints(cluster):
        if endpoint.model is None:
            continue
        args = [str(a) for a in compose["services"][endpoint.host]["command"]]
        assert flag(args, "--served-model-name") == endpoint.model, endpoint
        assert flag(args, "--model") == f"/models/{model_slug(endpoint.model)}", endpoint


def test_vllm_context_length_covers_the_profile(cluster: Settings, compose: Doc) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    for name, endpoint in cluster.generation.models.items():
        for url in endpoint.urls:
            host = urlsplit(url).hostname or ""
            (container,) = pod_spec(workload_behind(services[host]))["containers"]
            for args in (
                container_args(container),
                [str(a) for a in compose["services"][host]["command"]],
            ):
                assert int(flag(args, "--max-model-len") or 0) >= endpoint.max_model_len, name


def test_vllm_servers_ask_for_a_gpu_and_probe_health(compose: Doc) -> None:
    assert vllm_containers()
    for name, container in vllm_containers():
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", (name, probe)
    compose_vllm = {
        n: s for n, s in compose["services"].items() if s["image"].startswith(VLLM_IMAGE)
    }
    assert set(compose_vllm) == {name for name, _ in vllm_containers()}
    for name, service in compose_vllm.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), name
        probe = " ".join(service["healthcheck"]["test"])
        assert "/health" in probe and "/healthz" not in probe, name


def test_every_pod_is_scraped_by_prometheus() -> None:
    for deployment in of_kind("Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        (container,) = pod_spec(deployment)["containers"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) in {
            p["containerPort"] for p in container["ports"]
        }


def test_guardrag_serves_the_cluster_profile_as_non_root(cluster: Settings, compose: Doc) -> None:
    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "guardrag"]
    (container,) = pod_spec(deployment)["containers"]
    assert container["command"] == GUARDRAG_COMMAND
    env = {e["name"]: e for e in container["env"]}
    assert env["GUARDRAG_PROFILE"]["value"] == "cluster"
    assert env["GUARDRAG_MODELS_DIR"]["value"] == "/models"
    assert env["GUARDRAG_DATA_DIR"]["value"] == "/data"
    assert "secretKeyRef" in env["GUARDRAG_API__KEYS"]["valueFrom"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
    assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]

    image_command = re.search(r"^CMD (\[.+\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert image_command and json.loads(image_command.group(1)) == GUARDRAG_COMMAND

    service = compose["services"]["guardrag"]
    assert service["command"] == GUARDRAG_COMMAND
    assert service["environment"]["GUARDRAG_PROFILE"] == "cluster"
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert set(service["depends_on"]) >= {e.host for e in profile_endpoints(cluster)}


def test_guardrag_autoscaler_and_disruption_budget_cover_its_pods() -> None:
    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "guardrag"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "guardrag",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    (pdb,) = of_kind("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)


def test_download_job_fetches_every_model_the_profile_names(cluster: Settings) -> None:
    (job,) = of_kind("Job")
    (container,) = pod_spec(job)["containers"]
    wanted = {m.model for m in cluster.generation.models.values()}
    wanted |= {cluster.guards.output.model, cluster.embedder.model}
    if cluster.reranker.enabled:
        wanted.add(cluster.reranker.model)
    if cluster.guards.injection.classifier_model:
        wanted.add(cluster.guards.injection.classifier_model)
    missing = wanted - set(container["args"])
    assert not missing, f"add to deploy/k8s/jobs/download-models.yaml: {sorted(missing)}"


def test_qdrant_values_make_a_replicated_persistent_cluster() -> None:
    values = yaml.safe_load(QDRANT_VALUES.read_text())
    assert values["replicaCount"] >= 3
    assert values["config"]["cluster"]["enabled"] is True
    assert values["persistence"]["size"]
    assert values["podDisruptionBudget"]["enabled"] is True
