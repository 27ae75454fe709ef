"""The endpoint's Kubernetes manifests (``deploy/kubernetes/endpoint/endpoint.yaml``), checked offline.

Each object is validated against Kubernetes' own OpenAPI schemas by ``kubernetes-validate`` in strict mode (an
unknown or misspelt field fails), for the oldest and the newest Kubernetes this project claims. The wiring between
the objects and the endpoint is checked against the endpoint's own parser, key variable and metrics, and the liveness
probe's command runs against a stand-in ``/health`` (loading, served, failed, gone). The image itself runs with the
Deployment's command, arguments, environment and security settings in tests/test_container.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes_validate
import pytest
import yaml

from llmflow import PROJECT_ROOT
from llmflow.serving import openai_server
from llmflow.serving.auth import KEY_ENV
from llmflow.serving.metrics import Metrics

MANIFEST = PROJECT_ROOT / "deploy" / "kubernetes" / "endpoint" / "endpoint.yaml"
DOCUMENTS = list(yaml.safe_load_all(MANIFEST.read_text()))
BY_KIND = {doc["kind"]: doc for doc in DOCUMENTS}
DEPLOYMENT, SERVICE, HPA = BY_KIND["Deployment"], BY_KIND["Service"], BY_KIND["HorizontalPodAutoscaler"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]
# autoscaling/v2 behaviour and the Pods metric are in every release from 1.23; 1.29 is the oldest still supported.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# Phi-3-mini int4, --max-concurrent 8: peak RSS of the endpoint (README, "Concurrent clients against the OpenAI
# endpoint").
MEASURED_PEAK_GIB = 4.64


def _args() -> argparse.Namespace:
    parser = openai_server.build_parser()
    args = parser.parse_args(CONTAINER["args"])
    openai_server.check(args, parser)
    return args


def _gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def test_the_manifest_holds_one_deployment_service_and_autoscaler():
    assert sorted(doc["kind"] for doc in DOCUMENTS) == ["Deployment", "HorizontalPodAutoscaler", "Service"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_every_object_is_valid_for_kubernetes_in_strict_mode(kind: str, version: str):
    assert kubernetes_validate.validate(BY_KIND[kind], version, strict=True)


def test_strict_validation_refuses_a_misspelt_field():
    misspelt = copy.deepcopy(DEPLOYMENT)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_container_runs_the_endpoint_on_the_champion_with_arguments_its_parser_accepts():
    assert CONTAINER["command"] == ["python", "-m", "llmflow.serving.openai_server"]
    args = _args()
    assert args.model_uri.startswith("models:/") and args.model_uri.endswith("@champion")
    # Reachable from the Service, on the port the container declares.
    assert args.host == "0.0.0.0"
    (port,) = CONTAINER["ports"]
    assert args.port == port["containerPort"]
    env = {variable["name"]: variable for variable in CONTAINER["env"]}
    assert env[KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "llmflow", "key": "api-key"}
    assert "value" not in env[KEY_ENV], "the key comes from the Secret, never from the manifest"
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")


def test_readiness_is_health():
    (port,) = CONTAINER["ports"]
    readiness = CONTAINER["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/health" and readiness["port"] == port["name"]


@contextmanager
def _health(status: int, body: dict) -> Iterator[int]:
    """A stand-in for the endpoint's ``/health`` on a free loopback port, answering ``status`` with ``body``."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _liveness(port: int) -> int:
    """The liveness probe's command, run here against ``port`` instead of the container's; its exit status."""
    command = CONTAINER["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"] and f"127.0.0.1:{_args().port}/health" in command[2]
    script = command[2].replace(f":{_args().port}/", f":{port}/")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30).returncode


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "body", "alive"),
    [
        (200, {"status": "ok"}, True),
        (503, {"status": "loading"}, True),  # minutes at full size: not a reason to restart
        (503, {"status": "failed", "error": "MlflowException: ..."}, False),  # the endpoint never retries a first load
    ],
)
def test_liveness_restarts_a_failed_load_and_not_a_loading_model(status: int, body: dict, alive: bool):
    with _health(status, body) as port:
        assert (_liveness(port) == 0) is alive


@pytest.mark.integration
def test_liveness_fails_when_nothing_answers():
    with _health(200, {}) as port:
        pass
    assert _liveness(port) != 0


def test_a_pod_leaves_the_service_gracefully():
    # A pod leaving the Service finishes what it holds: the grace period outlasts a request.
    assert POD["terminationGracePeriodSeconds"] > _args().request_timeout
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_pod_runs_as_the_images_user_with_a_read_only_root_and_room_for_the_model():
    assert POD["securityContext"]["runAsUser"] == 1000 and POD["securityContext"]["runAsNonRoot"]
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"]
    mounts = {mount["mountPath"] for mount in CONTAINER["volumeMounts"]}
    assert {"/tmp", "/cache"} <= mounts, "MLflow downloads the model under /tmp; HF_HOME is under /cache"
    resources = CONTAINER["resources"]
    assert _gib(resources["requests"]["memory"]) > MEASURED_PEAK_GIB
    assert _gib(resources["limits"]["memory"]) >= _gib(resources["requests"]["memory"])


def test_the_service_selects_the_deployments_pods_on_its_named_port():
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert SERVICE["spec"]["selector"].items() <= labels.items()
    (port,) = SERVICE["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in CONTAINER["ports"]}


def test_the_autoscaler_scales_the_deployment_on_a_gauge_the_endpoint_exports():
    target = HPA["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    (metric,) = HPA["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    exported = Metrics().text().decode()
    assert f"# TYPE {name} gauge" in exported, f"{name} is not a gauge of llmflow.serving.metrics"
    # Scale before requests queue: the target is below the number a pod generates at once.
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < _args().max_concurrent
    assert HPA["spec"]["minReplicas"] >= 2 and HPA["spec"]["maxReplicas"] > HPA["spec"]["minReplicas"]
    # A new pod loads the model for minutes: scaling down waits longer than scaling up.
    behavior = HPA["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"]["stabilizationWindowSeconds"]
