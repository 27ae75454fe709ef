"""The Kubernetes image built and run for real, with Docker, on a base made here from Debian's packages.

There is no registry to pull ``python:3.11-slim`` from, so the base is a Debian bookworm root file system made by
``scripts/debian-base-image.sh`` (debootstrap, then ``docker import``). ``deploy/kubernetes/Dockerfile`` is built
FROM it as ``llmflow-base:latest``, the image ``deploy/kubernetes/MLproject`` names, with the pinned requirements
as wheels served on loopback (pip's ``--find-links``: the CPU torch wheel comes from this machine's pip, not from
PyTorch's index, which is not reachable here). Then ``mlflow run deploy/kubernetes -e download`` and
``-e export_onnx`` run in it through MLflow's docker environment (``--build-image``: MLflow adds
``deploy/kubernetes/`` to the base as the Kubernetes backend does), against ``mlflow server`` on 127.0.0.1.
``log_pyfunc`` follows, and the same image then serves the logged model behind the OpenAI-compatible endpoint
(``docker run ... python -m llmflow.serving.openai_server``), which the real ``openai`` client calls with a key.
Last, the image runs as ``deploy/kubernetes/endpoint/endpoint.yaml``'s Deployment runs it (its command, arguments,
environment, user and read-only root), serving the champion the Deployment names, registered on the test's server.

What stays unrun: the Kubernetes cluster itself (``--backend kubernetes`` is checked up to the Job it would
submit in tests/test_deploy.py) and a push to a registry.

Docker, debootstrap and root are needed; ``scripts/system-deps.sh`` (run by ``make test``) installs Debian's
``docker.io`` and ``debootstrap`` and starts the engine. Outside CI the module is skipped, with that hint, where
they are missing; under ``CI=true`` it fails instead. The base image and the pip layer are cached by Docker
between runs; the test re-tags ``llmflow-base:latest`` with an image of the current tree.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_DOCKER_IMAGE_URI, MLFLOW_PROJECT_ENV

from llmflow import PROJECT_ROOT
from llmflow.tracking.names import TAG_MODEL_URI, TAG_STEP
from tests.servers import free_port, running, started

pytestmark = pytest.mark.e2e

BASE_TAG = "llmflow/debian:bookworm-python3.11"
KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
IMAGE = "llmflow-base:latest"  # deploy/kubernetes/MLproject's docker_env image
MODEL_IN_CONTAINER = "/models/tiny-phi3"
INSTALL_HINT = (
    "needs a running Docker engine, debootstrap and root: `sudo apt-get install docker.io debootstrap` and start "
    "dockerd (scripts/system-deps.sh, run by `make test`, does both)"
)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root (debootstrap needs root)"
    if not (shutil.which("debootstrap") or Path("/usr/sbin/debootstrap").exists()):
        return "no debootstrap"
    if not shutil.which("docker"):
        return "no docker command"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"`docker info` failed: {info.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def docker_engine() -> None:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: {INSTALL_HINT}")
        pytest.skip(f"{reason}: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def wheel_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``requirements.txt`` as wheels, downloaded by this machine's pip and served on 127.0.0.1 for the build."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "-r", str(PROJECT_ROOT / "requirements.txt")]
        + ["--dest", str(wheels)],
        check=True,
        timeout=900,
    )
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(wheels))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _image_id(tag: str) -> str | None:
    inspect = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True)
    return inspect.stdout.strip() if inspect.returncode == 0 else None


@pytest.fixture(scope="module")
def base_image(docker_engine: None, wheel_index: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``deploy/kubernetes/Dockerfile`` built FROM a debootstrapped bookworm, tagged ``llmflow-base:latest``."""
    logs = tmp_path_factory.mktemp("image")
    with (logs / "debian-base.log").open("w") as log:
        made = subprocess.run(
            [str(PROJECT_ROOT / "scripts" / "debian-base-image.sh"), BASE_TAG],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=1200,
        )
    assert made.returncode == 0, (logs / "debian-base.log").read_text()[-3000:]
    previous = _image_id(IMAGE)
    command = ["docker", "build", "--file", str(KUBERNETES / "Dockerfile"), "--network", "host", "--tag", IMAGE]
    for arg in (f"BASE_IMAGE={BASE_TAG}", f"PIP_FIND_LINKS={wheel_index}", "PIP_NO_INDEX=1"):
        command += ["--build-arg", arg]
    with (logs / "build.log").open("w") as log:
        built = subprocess.run(command + [str(PROJECT_ROOT)], stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    assert built.returncode == 0, (logs / "build.log").read_text()[-3000:]
    if previous and previous != _image_id(IMAGE):
        # The image this one replaced, if nothing else uses it (a failure here only means something does).
        subprocess.run(["docker", "image", "rm", previous], capture_output=True)
    return IMAGE


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (SQLite, proxied artifacts); the containers reach it on the host's network."""
    root = tmp_path_factory.mktemp("server")
    store, port = f"sqlite:///{root / 'mlflow.db'}", free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--workers", "1"]
    command += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        with running(command, port, store, root / "server.log") as url:
            yield url


@pytest.fixture(scope="module")
def readable_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Phi-3, readable by the image's user (uid 1000): transformers writes its weights with mode 0600."""
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("mounted") / "tiny-phi3")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def _mlflow_run_docker(server: str, entry_point: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``mlflow run deploy/kubernetes -e <entry_point> --build-image`` as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_EXPERIMENT_", "MLFLOW_RUN_ID"))}
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["MLFLOW_TRACKING_URI"] = server
    # The container shares the host's network, so it reaches the server on 127.0.0.1.
    command = [sys.executable, "-m", "mlflow", "run", str(KUBERNETES), "-e", entry_point, "--build-image"]
    command += ["-A", "network=host", *args]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)


def _run_in_docker(server: str, entry_point: str, *args: str) -> tuple[str, str]:
    """:func:`_mlflow_run_docker`, which must succeed; returns (run id, output)."""
    proc = _mlflow_run_docker(server, entry_point, *args)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    match = re.search(r"=== Run \(ID '([0-9a-f]{32})'\) succeeded ===", output)
    assert match, output[-4000:]
    return match.group(1), output


@pytest.fixture(scope="module")
def docker_runs(base_image: str, tracking_server: str, readable_model: Path) -> dict[str, str]:
    download, download_output = _run_in_docker(
        tracking_server,
        "download",
        "-A",
        f"volume={readable_model}:{MODEL_IN_CONTAINER}:ro",
        "-P",
        f"model={MODEL_IN_CONTAINER}",
    )
    export, export_output = _run_in_docker(tracking_server, "export_onnx", "-P", f"download_run_id={download}")
    logged, log_output = _run_in_docker(tracking_server, "log_pyfunc", "-P", f"export_run_id={export}")
    return {
        "download": download,
        "export_onnx": export,
        "log_pyfunc": logged,
        "output": download_output + export_output + log_output,
    }


def test_download_and_export_finish_in_the_image(docker_runs: dict[str, str], tracking_server: str):
    client = MlflowClient(tracking_server)
    for step in ("download", "export_onnx", "log_pyfunc"):
        run = client.get_run(docker_runs[step])
        assert run.info.status == RunStatus.to_string(RunStatus.FINISHED), step
        assert run.data.tags[TAG_STEP] == step
        # MLflow ran it in Docker, in the image it built FROM llmflow-base (project name + commit).
        assert run.data.tags[MLFLOW_PROJECT_ENV] == "docker"
        assert run.data.tags[MLFLOW_DOCKER_IMAGE_URI].startswith("llmflow:")
    # MLflow's command line: the container on the host's network, the model folder mounted where the step read it.
    assert "docker run --rm --network host" in docker_runs["output"]
    assert f"python -m steps.download --model {MODEL_IN_CONTAINER}" in docker_runs["output"]


def test_runs_in_the_container_wrote_to_the_server(docker_runs: dict[str, str], tracking_server: str):
    client = MlflowClient(tracking_server)
    download = client.get_run(docker_runs["download"])
    # The path exists only inside the container: the step read the model there.
    assert download.data.params["model"] == MODEL_IN_CONTAINER
    export = client.get_run(docker_runs["export_onnx"])
    assert export.data.params["download_run_id"] == docker_runs["download"]
    onnx_files = {Path(f.path).name for f in client.list_artifacts(export.info.run_id, "onnx")}
    assert {"model.onnx", "genai_config.json"} <= onnx_files
    # The export's smoke test generated with onnxruntime-genai inside the image.
    assert "smoke test 'What is the capital of Spain?' -> 'Madrid'" in docker_runs["output"]


def test_a_mounted_folder_the_image_user_cannot_read_fails_in_one_line(
    base_image: str, tracking_server: str, tiny_model_dir: Path
):
    """The tiny model as transformers wrote it (model.safetensors 0600, owned by root), mounted as it is."""
    assert (tiny_model_dir / "model.safetensors").stat().st_mode & 0o077 == 0
    proc = _mlflow_run_docker(
        tracking_server,
        "download",
        "-A",
        f"volume={tiny_model_dir}:{MODEL_IN_CONTAINER}:ro",
        "-P",
        f"model={MODEL_IN_CONTAINER}",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        f"local model folder '{MODEL_IN_CONTAINER}': model.safetensors not readable by this user (uid 1000)" in output
    ), output[-3000:]


def test_the_image_serves_the_logged_model_behind_the_openai_endpoint(
    docker_runs: dict[str, str], tracking_server: str, tmp_path: Path
):
    import openai

    model_uri = MlflowClient(tracking_server).get_run(docker_runs["log_pyfunc"]).data.tags[TAG_MODEL_URI]
    port, key, name = free_port(), "container-test-key", f"llmflow-endpoint-{os.getpid()}"
    # As a pod runs it: the image's user, the tracking server's URL and the key (a Secret) in the environment.
    command = ["docker", "run", "--rm", "--name", name, "--network", "host"]
    command += ["-e", f"MLFLOW_TRACKING_URI={tracking_server}", "-e", f"LLMFLOW_API_KEY={key}", IMAGE]
    command += ["python", "-m", "llmflow.serving.openai_server", "--model-uri", model_uri]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    try:
        with started(command, port, tracking_server, tmp_path / "endpoint.log", timeout=300) as server:
            # 503 while the model loads (if the first look came that early), then 200 naming what it serves.
            assert set(server.health_seen) <= {503, 200} and server.health_seen[-1] == 200
            client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0)
            answer = client.chat.completions.create(
                model=model_uri, messages=[{"role": "user", "content": "What is the capital of Spain?"}]
            )
            assert answer.choices[0].message.content == "Madrid"
            assert answer.usage.completion_tokens > 0
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{server.base}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


ENDPOINT_MANIFEST = KUBERNETES / "endpoint" / "endpoint.yaml"


def _docker_run_as_deployment(
    pod: dict, name: str, image: str, env: dict[str, str], secrets: dict[tuple[str, str], str], port: int
) -> list[str]:
    """``docker run`` for the Deployment's one container, as its pod spec says: user, capabilities, memory limit,
    read-only root file system with its emptyDir mounts, command, arguments and environment. Three things differ,
    each because of this machine: ``env`` replaces literal values (the cluster's tracking server is not here),
    ``secrets`` stands for the Secret, and the container shares the host's network (a concurrent suite may hold
    port 8000), so ``--port`` is ``port``."""
    (container,) = pod["containers"]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    command = ["docker", "run", "--rm", "--name", name, "--network", "host"]
    command += ["--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    if security.get("readOnlyRootFilesystem"):
        command.append("--read-only")
    command += [f"--cap-drop={cap}" for cap in security.get("capabilities", {}).get("drop", [])]
    if security.get("allowPrivilegeEscalation") is False:
        command += ["--security-opt", "no-new-privileges"]
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory:
        command += ["--memory", memory.replace("Gi", "g").replace("Mi", "m")]
    empty_dirs = {volume["name"] for volume in pod.get("volumes", []) if "emptyDir" in volume}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in empty_dirs, f"{mount['name']}: only emptyDir volumes are mapped to Docker here"
        command += ["--tmpfs", f"{mount['mountPath']}:mode=1777"]
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            value = secrets[(ref["name"], ref["key"])]
        else:
            value = env.get(variable["name"], variable["value"])
        command += ["-e", f"{variable['name']}={value}"]
    args = list(container["args"])
    args[args.index("--port") + 1] = str(port)
    return command + ["--entrypoint", container["command"][0], image, *container["command"][1:], *args]


def test_the_image_serves_the_champion_as_the_kubernetes_deployment_runs_it(
    docker_runs: dict[str, str], tracking_server: str, tmp_path: Path
):
    import openai

    manifests = {doc["kind"]: doc for doc in yaml.safe_load_all(ENDPOINT_MANIFEST.read_text())}
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    champion = args[args.index("--model-uri") + 1]
    registered, alias = re.fullmatch(r"models:/([^@]+)@(\w+)", champion).groups()
    # The champion the Deployment names, on this tracking server: the model the image logged, registered and aliased.
    client = MlflowClient(tracking_server)
    logged = client.get_run(docker_runs["log_pyfunc"]).data.tags[TAG_MODEL_URI]
    mlflow.set_tracking_uri(tracking_server)
    try:
        version = mlflow.register_model(logged, registered)
    finally:
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias(registered, alias, version.version)

    port, key, name = free_port(), "deployment-test-key", f"llmflow-deployment-{os.getpid()}"
    secret = container["env"][[v["name"] for v in container["env"]].index("LLMFLOW_API_KEY")]["valueFrom"]
    command = _docker_run_as_deployment(
        pod,
        name,
        IMAGE,
        env={"MLFLOW_TRACKING_URI": tracking_server},
        secrets={(secret["secretKeyRef"]["name"], secret["secretKeyRef"]["key"]): key},
        port=port,
    )
    assert "--read-only" in command and "1000:1000" in command and "8g" in command
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"
    try:
        with started(command, port, tracking_server, tmp_path / "deployment.log", timeout=300) as server:
            # What the readiness probe sees: 503 while the model loads (if it looked that early), then 200.
            assert set(server.health_seen) <= {503, 200} and server.health_seen[-1] == 200
            openai_client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0)
            answer = openai_client.chat.completions.create(
                model=champion, messages=[{"role": "user", "content": "What is the capital of Spain?"}]
            )
            assert answer.choices[0].message.content == "Madrid"
            # The gauge the HorizontalPodAutoscaler scales on is exported by this pod.
            hpa_metric = manifests["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
            exported = urllib.request.urlopen(f"{server.base}/metrics", timeout=10).read().decode()
            assert re.search(rf"^{hpa_metric} 0\.0$", exported, re.MULTILINE), exported[:2000]
            # The liveness probe's command, inside the container as the kubelet runs it (on this run's port).
            liveness = container["livenessProbe"]["exec"]["command"]
            script = liveness[-1].replace(f":{args[args.index('--port') + 1]}/", f":{port}/")
            probe_run = subprocess.run(["docker", "exec", name, *liveness[:-1], script], capture_output=True, text=True)
            assert probe_run.returncode == 0, probe_run.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
