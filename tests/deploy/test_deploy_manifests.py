"""The deployment files, checked offline: the Kubernetes manifests rendered by kustomize and
validated against the Kubernetes schemas, compose against the Compose specification's
schema, both against the worker registry, the image's build files, the NATS config."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bus.connection import parse_servers
from gateway_bridge.settings import BridgeSettings
from mesh.infra import _binary
from mesh.registry import WORKERS
from tests.deploy_support import AUTH_CONF, DEV_CONF, ROOT, SERVER_CONF, USERS, password_var

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
#: The Kubernetes version the manifests are validated for (kubernetes-validate's newest).
KUBERNETES = "1.37.0"
#: Workers being built as this is written: they have users, Deployments and compose
#: services already, and join mesh/registry.py when they land.
PENDING = {"llmops", "ml", "promptgen"}


# --------------------------------------------------------------------------- kubernetes


@cache
def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay rendered by ``kubectl kustomize`` (offline). Without kubectl, the base
    is assembled here instead (resources, generated ConfigMaps, image tags; no overlay
    patches), so the schema and registry checks still run."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return _assemble(K8S / "base")
    out = subprocess.run(  # noqa: S603 - fixed argv
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _assemble(root: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (root / resource).resolve()
        if path.is_dir():
            docs += _assemble(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in kustomization.get("configMapGenerator", []):
        data = dict(line.split("=", 1) for line in gen.get("literals", []))
        data.update({f: (root / f).read_text() for f in gen.get("files", [])})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"]},
                "data": data,
            }
        )
    tags = {i["name"]: i["newTag"] for i in kustomization.get("images", [])}
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if c["image"] in tags:
                c["image"] = f"{c['image']}:{tags[c['image']]}"
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(overlay: str):
    docs = render(overlay)
    assert len(docs) > 30
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_broken_object_is_caught_by_the_validation():
    [deployment] = [d for d in render("prod") if d["kind"] == "Deployment"][:1]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_registry_worker_runs_as_its_own_nats_user(overlay: str):
    deployments = of_kind(render(overlay), "Deployment")
    workers = {
        n
        for n, d in deployments.items()
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    }
    assert set(WORKERS) <= workers <= set(WORKERS) | PENDING
    for name in workers:
        c = container(deployments[name])
        env = env_of(c)
        assert c["args"] == ["worker", name]
        assert env["NATS_USER"]["value"] == name
        assert env["SERVICE_NAME"]["value"] == name
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "nats-users",
            "key": name,
        }
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "mesh-database"
        probes = [c[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe")]
        assert probes == [["mesh", "probe", name]] * 2
        assert c["livenessProbe"]["exec"]["command"] == ["mesh", "probe", name, "--live"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mesh_pods_are_non_root_read_only_bounded_and_drain_in_time(overlay: str):
    docs = render(overlay)
    mesh = [
        d
        for d in of_kind(docs, "Deployment").values()
        if d["metadata"]["name"] in set(WORKERS) | PENDING | {"bridge"}
    ]
    assert len(mesh) == len(set(WORKERS) | PENDING) + 1
    for d in mesh:
        pod = d["spec"]["template"]["spec"]
        c = container(d)
        sec = c["securityContext"]
        assert sec["runAsNonRoot"] and sec["readOnlyRootFilesystem"], d["metadata"]["name"]
        assert sec["allowPrivilegeEscalation"] is False
        assert sec["capabilities"] == {"drop": ["ALL"]}
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert {"cpu", "memory"} <= set(c["resources"]["limits"])
        # The runtime drains for up to 10 s (bus/worker.py), the bridge for 10 s + preStop.
        assert pod["terminationGracePeriodSeconds"] >= 25
        assert pod["automountServiceAccountToken"] is False
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert c["envFrom"][0]["configMapRef"]["name"].startswith("mesh-config")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_bridge_is_reachable_from_outside(overlay: str):
    docs = render(overlay)
    ingresses = of_kind(docs, "Ingress")
    assert list(ingresses) == ["bridge"]
    backend = ingresses["bridge"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == "bridge"
    services = set(of_kind(docs, "Service"))
    assert services - {"postgres", "redis"} == {"bridge", "nats", "nats-headless"}
    policies = of_kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in policies["workers"]["spec"]  # workers take no connections
    bridge_from = policies["bridge"]["spec"]["ingress"][0]["from"]
    assert bridge_from[0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    egress_ports = {
        p["port"] for rule in policies["workers"]["spec"]["egress"] for p in rule["ports"]
    }
    assert egress_ports == {4222, 5432, 6379}  # NATS, Postgres, Redis


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_bridge_and_gateway_autoscale_and_every_part_has_a_disruption_budget(overlay: str):
    docs = render(overlay)
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"bridge", "gateway"}
    budgets = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in of_kind(docs, "PodDisruptionBudget").values()
    }
    assert set(WORKERS) | {"bridge", "nats"} <= budgets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_is_a_three_node_cluster_with_every_users_password_from_a_secret(overlay: str):
    docs = render(overlay)
    nats = of_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    c = container(nats)
    env = env_of(c)
    assert env["NATS_SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    routes = [env[f"NATS_ROUTE_{i}"]["value"] for i in (1, 2, 3)]
    assert routes == [f"nats://nats-{i}.nats-headless:6222" for i in range(3)]
    for user in USERS:
        ref = env[password_var(user)]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "nats-users", "key": user}
    referenced = set(re.findall(r"\$([A-Z_]+_NATS_PASSWORD)", AUTH_CONF.read_text()))
    assert referenced == {password_var(u) for u in USERS}
    [config] = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")
    ]
    assert config["data"]["nats-server.conf"] == SERVER_CONF.read_text()
    assert config["data"]["nats-auth.conf"] == AUTH_CONF.read_text()
    urls = parse_servers(_mesh_config(docs)["NATS_URL"]).urls
    assert urls == tuple(f"nats://nats-{i}.nats-headless:4222" for i in range(3))


def _mesh_config(docs: list[dict[str, Any]]) -> dict[str, str]:
    [config] = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mesh-config")
    ]
    return dict(config["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_in_the_manifests(overlay: str):
    docs = render(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]
    for d in of_kind(docs, "Deployment").values():
        for e in container(d).get("env", []):
            if re.search("PASSWORD|SECRET|TOKEN|KEY", e["name"]):
                assert "valueFrom" in e, (d["metadata"]["name"], e["name"])


def test_the_committed_service_files_are_what_generate_py_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    expected = module.rendered()
    actual = {p.name: p.read_text() for p in (K8S / "base" / "services").glob("*.yaml")}
    assert actual == expected, "run: .venv/bin/python deploy/k8s/generate.py"


# --------------------------------------------------------------------------- compose


@cache
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


@cache
def compose_schema() -> dict[str, Any]:
    # The Compose specification's schema (compose-spec/compose-spec, schema/compose-spec.json),
    # as vendored by check-jsonschema.
    path = (
        importlib.resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    )
    return dict(json.loads(path.read_text()))


def test_compose_follows_the_compose_specification():
    jsonschema.validate(compose(), compose_schema())


def test_a_compose_mistake_is_caught_by_the_schema():
    broken = json.loads(json.dumps(compose()))
    broken["services"]["cache"]["restart_policy"] = "always"  # not a service key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def test_compose_runs_the_same_services_users_and_environment_as_kubernetes():
    services = compose()["services"]
    docs = render("prod")
    deployments = of_kind(docs, "Deployment")
    shared = set(_mesh_config(docs))
    workers = {n for n, s in services.items() if s.get("command", [None])[0] == "worker"}
    assert set(WORKERS) <= workers <= set(WORKERS) | PENDING
    assert workers | {"bridge"} == {n for n in deployments if n in workers | {"bridge"}}
    for name in workers | {"bridge"}:
        env = services[name]["environment"]
        assert env["NATS_USER"] == name and env["SERVICE_NAME"] == name
        assert env["NATS_PASSWORD"].startswith(f"${{{password_var(name)}")
        k8s_env = set(env_of(container(deployments[name]))) | shared
        # The same names (compose adds only its optional OpenTelemetry pass-through).
        assert set(env) - {"OTEL_EXPORTER_OTLP_ENDPOINT"} == k8s_env, name
        if name != "bridge":
            assert services[name]["command"] == ["worker", name]
            assert services[name]["healthcheck"]["test"] == ["CMD", "mesh", "probe", name]
    nats = [n for n in services if n.startswith("nats-")]
    assert len(nats) == 3
    for n in nats:
        env = services[n]["environment"]
        assert {password_var(u) for u in USERS} <= set(env)
        assert env["NATS_SERVER_NAME"] == n


def test_compose_holds_no_secret_values():
    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET", key) or "postgresql://" in str(value):
                assert re.search(r"\$\{[A-Z_]+(:[?-][^}]*)?\}", str(value)), (name, key)


def test_an_empty_jwt_secret_from_compose_counts_as_unset(monkeypatch: pytest.MonkeyPatch):
    bridge = compose()["services"]["bridge"]["environment"]
    assert bridge["JWT_SECRET"] == "${JWT_SECRET:-}"  # an empty string when not set
    monkeypatch.setenv("JWT_SECRET", "")
    monkeypatch.setenv("JWT_JWKS_URL", "")
    settings = BridgeSettings()
    assert settings.jwt_secret is None and settings.jwt_jwks_url is None


# --------------------------------------------------------------------------- image


def test_the_docker_context_leaves_out_secrets_and_local_state():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", ".mesh"} <= ignored


def test_the_image_is_multi_stage_with_compilers_only_in_the_build_stage():
    stages = re.split(r"(?m)^FROM ", (ROOT / "Dockerfile").read_text())[1:]
    assert len(stages) == 2 and stages[0].split()[2] == "build"
    build, final = stages
    assert "build-essential" in build and "cmake" in build
    assert "build-essential" not in final and "apt-get" not in final
    assert "COPY --from=build /opt/mesh /opt/mesh" in final
    assert re.search(r"(?m)^USER 10001", final)


def test_the_image_copies_every_package_the_project_installs():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pattern in packages:
        name = pattern.rstrip("*")
        assert re.search(rf"(?m)^COPY {name} {name}$", dockerfile), name


# --------------------------------------------------------------------------- NATS


def _nats_env() -> dict[str, str]:
    env = {password_var(u): "p" + u for u in USERS}
    env.update(
        NATS_SERVER_NAME="nats-0",
        NATS_STORE_DIR="/tmp/unused",
        **{f"NATS_ROUTE_{i}": f"nats://127.0.0.1:{6222 + i}" for i in (1, 2, 3)},
    )
    return env


def test_nats_server_accepts_the_production_config():
    out = subprocess.run(  # noqa: S603 - fixed argv
        [_binary("nats-server"), "-c", str(SERVER_CONF), "-t"],
        env={**os.environ, **_nats_env()},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr + out.stdout


def test_the_production_config_keeps_the_development_limits():
    def limits(text: str) -> dict[str, str]:
        keys = (
            "max_payload",
            "max_pending",
            "max_connections",
            "max_memory_store",
            "max_file_store",
        )
        return {k: m.group(1) for k in keys if (m := re.search(rf"(?m)^\s*{k}:\s*(\S+)", text))}

    assert limits(SERVER_CONF.read_text()) == limits(DEV_CONF.read_text())
    assert re.search(r"(?m)^\s*sync_interval:\s*always", SERVER_CONF.read_text())
    # A second jetstream block would replace the server's (nats-server#7451).
    assert not re.search(r"(?m)^\s*jetstream\s*[{:]", AUTH_CONF.read_text())


@pytest.mark.parametrize(
    ("url", "user", "urls", "prefix"),
    [
        ("nats://127.0.0.1:4222", None, ("nats://127.0.0.1:4222",), "_INBOX"),
        (
            "nats://a:4222, nats://b:4222,nats://c:4222",
            None,
            ("nats://a:4222", "nats://b:4222", "nats://c:4222"),
            "_INBOX",
        ),
        (
            "nats://cache:pw@a:4222,nats://b:4222",
            None,
            ("nats://a:4222", "nats://b:4222"),
            "_INBOX.cache",
        ),
        ("a:4222", "rag", ("nats://a:4222",), "_INBOX.rag"),
    ],
)
def test_nats_url_lists_servers_and_the_user_sets_the_inbox_prefix(url, user, urls, prefix):
    servers = parse_servers(url, user, "secret" if user else None)
    assert servers.urls == urls
    assert servers.inbox_prefix == prefix


def test_credentials_in_the_url_become_options_and_explicit_ones_win():
    assert parse_servers("nats://cache:p%40ss@a:4222").password == "p@ss"
    servers = parse_servers("nats://cache:x@a:4222", "rag", "y")
    assert (servers.user, servers.password) == ("rag", "y")


@pytest.mark.parametrize("url", ["", " , ", "nats://a.b:4222"])
def test_a_nats_url_naming_no_server_or_a_bad_user_is_refused(url):
    with pytest.raises(ValueError):
        parse_servers(url, "bad.user" if url.startswith("nats") else None)


async def test_the_first_connection_gives_up_at_its_deadline_on_an_unreachable_cluster():
    from bus.connection import connect
    from mesh.infra import free_port

    urls = ",".join(f"nats://127.0.0.1:{free_port()}" for _ in range(3))
    with pytest.raises(TimeoutError):
        await connect(urls, "unreachable", first_attempt_timeout=2.0)
