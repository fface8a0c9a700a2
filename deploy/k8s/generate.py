"""Write deploy/k8s/base/services/*.yaml: one Deployment (+ PDB, HPA) per service.

Nine workers and the bridge differ only in a few facts (the table below), so the YAML is
generated from it rather than copied ten times; tests/deploy/test_deploy_manifests.py fails when
the committed files differ from this output. Run it after changing the table:

    .venv/bin/python deploy/k8s/generate.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent / "base" / "services"
IMAGE = "motadata/mesh"
PART_OF = "motadata-mesh"
#: Seconds a stopping worker needs: the runtime drains its subscriptions and waits up to
#: 10 s for in-flight handlers (bus/worker.py DEFAULT_DRAIN_TIMEOUT_S), then the job
#: consumers finish their batch and the NATS connection drains; 30 s covers all of it.
WORKER_GRACE_S = 30
#: The bridge: 5 s for the endpoints to drop the pod (preStop), uvicorn's 10 s graceful
#: shutdown (gateway_bridge/server.py), then the NATS drain.
BRIDGE_GRACE_S = 30
HEALTH_DIR = "/tmp/mesh"


@dataclass(frozen=True)
class Service:
    name: str
    requests: tuple[str, str]  # cpu, memory
    limits: tuple[str, str]
    replicas: int = 1
    hpa: tuple[int, int] | None = None  # min, max replicas on CPU
    internet: bool = False  # egress to HTTPS (LLM providers, the agent's http_get tool)
    models: bool = False  # mounts the gateway's model table


SERVICES: tuple[Service, ...] = (
    Service("cache", ("100m", "128Mi"), ("500m", "256Mi")),
    Service(
        "gateway",
        ("500m", "1Gi"),
        ("2", "3Gi"),
        replicas=2,
        hpa=(2, 8),
        internet=True,
        models=True,
    ),
    Service("prompt", ("100m", "256Mi"), ("1", "512Mi")),
    Service("rag", ("250m", "512Mi"), ("1", "1Gi")),
    Service("ingestion", ("250m", "512Mi"), ("2", "2Gi")),
    Service("agent", ("250m", "512Mi"), ("1", "1Gi"), internet=True),
    # Built as this is written; their NATS users already exist (deploy/nats/nats-auth.conf).
    Service("llmops", ("100m", "256Mi"), ("500m", "512Mi")),
    Service("ml", ("500m", "1Gi"), ("2", "4Gi")),
    Service("promptgen", ("100m", "256Mi"), ("1", "512Mi")),
)
BRIDGE = Service("bridge", ("250m", "256Mi"), ("1", "512Mi"), replicas=2, hpa=(2, 10))


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
    }


def _security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(svc: Service) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "SERVICE_NAME", "value": svc.name},
        {"name": "NATS_USER", "value": svc.name},
        {
            "name": "NATS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "nats-users", "key": svc.name}},
        },
    ]
    if svc.name != "bridge":
        env.append(
            {
                "name": "DATABASE_URL",
                "valueFrom": {"secretKeyRef": {"name": "mesh-database", "key": "url"}},
            }
        )
    if svc.models:
        env.append({"name": "GATEWAY_MODELS", "value": "/etc/mesh/models.yaml"})
    if svc.name == "bridge":
        env += [
            {"name": "BRIDGE_HOST", "value": "0.0.0.0"},
            {"name": "BRIDGE_PORT", "value": "8080"},
            {
                "name": "JWT_SECRET",
                "valueFrom": {
                    "secretKeyRef": {"name": "mesh-jwt", "key": "secret", "optional": True}
                },
            },
        ]
    return env


def _probes(svc: Service) -> dict[str, Any]:
    if svc.name == "bridge":
        http = {"port": "http", "path": "/readyz"}
        return {
            "startupProbe": {"httpGet": http, "periodSeconds": 2, "failureThreshold": 60},
            "readinessProbe": {"httpGet": http, "periodSeconds": 5, "failureThreshold": 2},
            "livenessProbe": {
                "httpGet": {"port": "http", "path": "/healthz"},
                "periodSeconds": 10,
                "failureThreshold": 3,
            },
        }
    ready = ["mesh", "probe", svc.name]
    # A probe is a Python process: ~1 s of CPU to import and ask, more under a low CPU
    # limit; its own wait for the answer is 3 s. 10 s leaves room for both.
    return {
        # Migrations and model loading happen before the service answers: up to 5 min.
        "startupProbe": {
            "exec": {"command": ready},
            "periodSeconds": 5,
            "timeoutSeconds": 10,
            "failureThreshold": 60,
        },
        "readinessProbe": {
            "exec": {"command": ready},
            "periodSeconds": 10,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
        # "--live": NATS being unreachable is not the worker's fault (it reconnects).
        "livenessProbe": {
            "exec": {"command": [*ready, "--live"]},
            "periodSeconds": 20,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
    }


def deployment(svc: Service) -> dict[str, Any]:
    component = "bridge" if svc.name == "bridge" else "worker"
    pod_labels = labels(svc.name, component)
    if svc.internet:
        pod_labels["mesh.motadata.io/egress-https"] = "true"
    container: dict[str, Any] = {
        "name": svc.name,
        "image": IMAGE,
        "args": ["bridge"] if svc.name == "bridge" else ["worker", svc.name],
        "envFrom": [{"configMapRef": {"name": "mesh-config"}}],
        "env": _env(svc),
        "resources": {
            "requests": {"cpu": svc.requests[0], "memory": svc.requests[1]},
            "limits": {"cpu": svc.limits[0], "memory": svc.limits[1]},
        },
        "securityContext": _security(),
        **_probes(svc),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    if svc.models:
        container["envFrom"].append({"secretRef": {"name": "llm-providers", "optional": True}})
        container["volumeMounts"].append(
            {"name": "models", "mountPath": "/etc/mesh", "readOnly": True}
        )
        volumes.append({"name": "models", "configMap": {"name": "gateway-models"}})
    if svc.name == "bridge":
        container["ports"] = [{"name": "http", "containerPort": 8080}]
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
        container["env"].append(
            {
                "name": "JWT_JWKS_URL",
                "valueFrom": {
                    "configMapKeyRef": {
                        "name": "mesh-config",
                        "key": "JWT_JWKS_URL",
                        "optional": True,
                    }
                },
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": svc.name, "labels": labels(svc.name, component)},
        "spec": {
            "replicas": svc.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {"app.kubernetes.io/name": svc.name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": (
                        BRIDGE_GRACE_S if svc.name == "bridge" else WORKER_GRACE_S
                    ),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": svc.name}},
                        }
                    ],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def pdb(svc: Service) -> dict[str, Any]:
    component = "bridge" if svc.name == "bridge" else "worker"
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": svc.name, "labels": labels(svc.name, component)},
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": svc.name}},
        },
    }


def hpa(svc: Service) -> dict[str, Any]:
    assert svc.hpa is not None
    component = "bridge" if svc.name == "bridge" else "worker"
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": svc.name, "labels": labels(svc.name, component)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": svc.name},
            "minReplicas": svc.hpa[0],
            "maxReplicas": svc.hpa[1],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def documents(svc: Service) -> list[dict[str, Any]]:
    docs = [deployment(svc), pdb(svc)]
    if svc.hpa:
        docs.append(hpa(svc))
    return docs


def render(svc: Service) -> str:
    head = "# Generated by deploy/k8s/generate.py from its table; edit that, then rerun it.\n"
    return head + yaml.safe_dump_all(documents(svc), sort_keys=False, width=100)


def rendered() -> dict[str, str]:
    """File name → content, for every service and the bridge."""
    return {f"{svc.name}.yaml": render(svc) for svc in (*SERVICES, BRIDGE)}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(rendered())} files to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
