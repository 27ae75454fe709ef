"""The pipeline against a real tracking server over HTTP, as a team runs it.

- ``main`` runs end to end through ``mlflow server`` on 127.0.0.1, with proxied artifact storage and a
  real PostgreSQL backend store: a throwaway cluster made with ``initdb`` and ``pg_ctl`` on a free
  loopback port. PostgreSQL comes from Debian's ``postgresql`` package, which ``.ci/run`` installs.
- One step alone runs through ``mlflow server`` on SQLite: the embedded default, served.

The servers run with ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: the pipeline uses no server jobs, and
the job runner would start seven more processes on a 2-core CI machine.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psycopg
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from llmflow import PROJECT_ROOT
from llmflow.tracking.names import TAG_STEP
from tests.servers import free_port, running

pytestmark = pytest.mark.e2e
STEPS = {"download", "export_onnx", "log_transformers", "log_pyfunc", "register", "evaluate"}
NAME = "server-e2e"
PG_USER = "mlflow"
INSTALL_HINT = (
    "PostgreSQL is not installed: no initdb on PATH, from `pg_config --bindir` or under "
    "/usr/lib/postgresql/*/bin; install it with `sudo apt-get install postgresql` (Debian/Ubuntu) "
    "or `brew install postgresql` (macOS) to run this test"
)


def _postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH, then ``pg_config --bindir``, then Debian's layout."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "initdb").is_file():
            return bindir

    def major(path: Path) -> int:
        match = re.fullmatch(r"\d+", path.parent.parent.name)
        return int(match.group()) if match else -1

    # Debian and Ubuntu keep the server binaries off PATH, one folder per major version.
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=major)
    return found[-1].parent if found else None


def _as_owner(uid: int | None, gid: int | None) -> dict:
    """Keyword arguments for subprocess to run as ``uid`` (initdb and postgres refuse to run as root)."""
    return {} if uid is None else {"user": uid, "group": gid, "extra_groups": []}


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The URI of a throwaway PostgreSQL cluster on a free loopback port: database ``mlflow``, with a password."""
    bindir = _postgres_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail(f"{INSTALL_HINT}; .ci/run should have installed it")
        pytest.skip(INSTALL_HINT)
    uid = gid = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")  # made by Debian's package
        except KeyError:
            owner = pwd.getpwnam("nobody")
        uid, gid = owner.pw_uid, owner.pw_gid
    # Not under pytest's tmp folder: that one is private to its owner, and the cluster may belong to another user.
    root = Path(tempfile.mkdtemp(prefix="llmflow-pg-"))
    password = secrets.token_hex(12)
    (root / "password").write_text(password + "\n")
    if uid is not None:
        os.chown(root, uid, gid)
        os.chown(root / "password", uid, gid)
    data, port = root / "data", free_port()
    as_owner = _as_owner(uid, gid)
    ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={root / 'password'}"]
        initdb += ["--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync"]
        out = subprocess.run(initdb, capture_output=True, text=True, timeout=120, **as_owner)
        assert out.returncode == 0, f"initdb failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = [*ctl, "-l", str(root / "postgres.log"), "-w", "-t", "60", "-o", options, "start"]
        out = subprocess.run(start, capture_output=True, text=True, timeout=120, **as_owner)
        log = (root / "postgres.log").read_text() if (root / "postgres.log").exists() else ""
        assert out.returncode == 0, f"pg_ctl start failed:\n{out.stdout[-1000:]}{out.stderr[-1000:]}\n{log[-2000:]}"
        admin = f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
        yield f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():  # also after a start that timed out
            subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True, timeout=60, **as_owner)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Server:
    url: str
    artifacts: Path  # the server's --artifacts-destination


@contextmanager
def _mlflow_server(backend_store_uri: str, root: Path) -> Iterator[Server]:
    """``mlflow server`` on a free loopback port, serving artifacts from ``root / 'artifacts'``."""
    artifacts, port = root / "artifacts", free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri]
    command += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        with running(command, port, backend_store_uri, root / "server.log") as url:
            yield Server(url, artifacts)


def _mlflow_command(server: Server, experiment_id: str, entry_point: str, *params: str) -> tuple[list[str], dict]:
    """``mlflow run <project> -e <entry_point>`` as a user runs it, with only the server's URL, and its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_EXPERIMENT_", "MLFLOW_RUN_ID"))}
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["MLFLOW_TRACKING_URI"] = server.url
    # `--env-manager local` runs `python` from PATH: the one running these tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", entry_point]
    command += ["--env-manager", "local", "--experiment-id", experiment_id]
    for param in params:
        command += ["-P", param]
    return command, env


def _mlflow_run(
    server: Server, cwd: Path, experiment_id: str, entry_point: str, *params: str
) -> subprocess.CompletedProcess[str]:
    """``mlflow run <project> -e <entry_point>`` from ``cwd``, to its end."""
    command, env = _mlflow_command(server, experiment_id, entry_point, *params)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _on_server(server: Server, uri: str) -> Path:
    """Where the server keeps a ``mlflow-artifacts:`` URI: under its artifacts destination."""
    assert uri.startswith("mlflow-artifacts:/"), f"expected a proxied mlflow-artifacts: URI, got {uri!r}"
    return server.artifacts / uri.removeprefix("mlflow-artifacts:").lstrip("/")


@dataclass(frozen=True)
class MainRun:
    server: Server
    client: MlflowClient
    experiment_id: str
    runs: list[Run]
    cwd: Path
    params: tuple[str, ...]


@pytest.fixture(scope="module")
def pg_main(postgres: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MainRun]:
    """``mlflow run -e main`` on the tiny Phi-3, once, through a server whose backend store is PostgreSQL."""
    root = tmp_path_factory.mktemp("pg-server")
    with _mlflow_server(postgres, root) as server:
        client = MlflowClient(tracking_uri=server.url)
        experiment_id = client.create_experiment("server")
        cwd = tmp_path_factory.mktemp("client-cwd")
        # 12 of the 60 questions the tiny model learnt keep the evaluations short.
        qa = tmp_path_factory.mktemp("qa") / "qa.jsonl"
        qa.write_text("".join((PROJECT_ROOT / "data" / "qa.jsonl").read_text().splitlines(keepends=True)[:12]))
        params = (f"model={tiny_model_dir}", f"registered_model_name={NAME}", f"qa_path={qa}")
        proc = _mlflow_run(server, cwd, experiment_id, "main", *params)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
        yield MainRun(server, client, experiment_id, runs, cwd, params)


def test_main_over_http_finishes_every_step_nested(pg_main: MainRun):
    mains = [r for r in pg_main.runs if r.data.tags.get(TAG_STEP) == "main"]
    assert len(mains) == 1 and mains[0].info.status == "FINISHED"
    children = [r for r in pg_main.runs if r.data.tags.get("mlflow.parentRunId") == mains[0].info.run_id]
    assert {r.data.tags[TAG_STEP] for r in children} == STEPS
    assert [r for r in children if r.info.status != "FINISHED"] == []


def test_both_models_registered_with_aliases_as_the_gate_decided(pg_main: MainRun):
    for flavour in ("onnx", "transformers"):
        name = f"{NAME}-{flavour}"
        version = pg_main.client.get_model_version(name, "1")
        assert "challenger" not in version.aliases, "a judged version is no longer the challenger"
        status = version.tags.get("validation_status")
        assert status in {"passed", "failed"}, f"{name} version 1 has validation_status {status!r}"
        assert ("champion" in version.aliases) == (status == "passed")
        # The registered model's files are proxied too: they live under the server's destination.
        location = pg_main.client.get_model_version_download_uri(name, "1")
        assert _on_server(pg_main.server, location).joinpath("MLmodel").is_file()


def test_artifacts_are_proxied_to_the_server_destination(pg_main: MainRun):
    for run in pg_main.runs:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    runs = {r.data.tags.get(TAG_STEP): r for r in pg_main.runs}
    download = _on_server(pg_main.server, runs["download"].info.artifact_uri)
    assert (download / "manifest.json").is_file() and (download / "model" / "config.json").is_file()
    onnx = _on_server(pg_main.server, runs["export_onnx"].info.artifact_uri) / "onnx"
    assert (onnx / "model.onnx").is_file() and (onnx / "genai_config.json").is_file()
    # Read back over HTTP, the manifest is the file the server holds.
    fetched = mlflow.artifacts.download_artifacts(
        run_id=runs["download"].info.run_id,
        artifact_path="manifest.json",
        dst_path=str(pg_main.cwd.parent / "fetched"),
        tracking_uri=pg_main.server.url,
    )
    assert Path(fetched).read_bytes() == (download / "manifest.json").read_bytes()
    # The client wrote no store and no artifacts where it ran.
    assert list(pg_main.cwd.iterdir()) == []


def test_the_rows_are_in_postgresql(pg_main: MainRun, postgres: str):
    with psycopg.connect(postgres) as conn:
        query = "SELECT count(*) FROM runs WHERE experiment_id = %s"
        (runs,) = conn.execute(query, (int(pg_main.experiment_id),)).fetchone()
        models = {name for (name,) in conn.execute("SELECT name FROM registered_models")}
        (versions,) = conn.execute("SELECT count(*) FROM model_versions WHERE name LIKE %s", (f"{NAME}-%",)).fetchone()
    # What the server answered over HTTP is what PostgreSQL holds.
    assert runs == len(pg_main.runs) >= len(STEPS) + 1
    assert {f"{NAME}-onnx", f"{NAME}-transformers"} <= models
    assert versions == 2


def test_one_step_over_http_on_the_sqlite_default(
    _empty_store: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    root = tmp_path_factory.mktemp("sqlite-server")
    shutil.copyfile(_empty_store, root / "mlflow.db")  # the schema is made once per session
    with _mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root) as server:
        client = MlflowClient(tracking_uri=server.url)
        experiment_id = client.create_experiment("sqlite")
        cwd = tmp_path_factory.mktemp("client-cwd")
        proc = _mlflow_run(server, cwd, experiment_id, "download", f"model={tiny_model_dir}")
        assert proc.returncode == 0, proc.stderr[-4000:]
        (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags[TAG_STEP] == "download"
    stored = _on_server(server, run.info.artifact_uri)
    assert (stored / "manifest.json").is_file() and (stored / "model" / "config.json").is_file()
    assert list(cwd.iterdir()) == []


def _race(pg_main: MainRun, *param_sets: tuple[str, ...]) -> list[str]:
    """Start one ``main`` per parameter set at the same moment on the server; return the versions they registered.

    Each reruns from ``log_pyfunc`` (download and export are reused), so each registers a new ONNX version and
    evaluates it while the others do the same: what a scheduled job and a person's ``main`` do to one registry.
    """
    procs = []
    for params in param_sets:
        command, env = _mlflow_command(pg_main.server, pg_main.experiment_id, "main", *pg_main.params, *params)
        procs.append(
            subprocess.Popen(
                command, cwd=pg_main.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [proc.communicate(timeout=1200) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-4000:]
    versions = []
    for out, err in outputs:  # main's summary: "<name>-onnx version <n>  aliases: ..."
        registered = re.findall(rf"{NAME}-onnx version (\d+)", out)
        assert registered, out[-3000:] + err[-3000:]
        versions.append(registered[0])
    return versions


def _check_registry_after_race(client: MlflowClient, name: str, raced: list[str]) -> None:
    """Exactly one champion, which passed; ``previous`` is the version it replaced, never itself; no version judged
    is still ``challenger``; each raced version was judged by an evaluation of its own; no lock is left."""
    model = client.get_registered_model(name)
    aliases = {alias: str(version) for alias, version in model.aliases.items()}
    champion = client.get_model_version(name, aliases["champion"])
    assert champion.tags["validation_status"] == "passed"
    assert aliases.get("previous") != aliases["champion"]
    assert aliases.get("previous") == champion.tags.get("llmflow_previous_champion"), (aliases, champion.tags)
    evaluations = set()
    for number in raced:
        version = client.get_model_version(name, number)
        assert version.tags.get("validation_status") in ("passed", "failed"), f"version {number} was never judged"
        evaluations.add(version.tags["llmflow_evaluate_run_id"])
        run = client.get_run(version.tags["llmflow_evaluate_run_id"])
        assert run.data.tags["llmflow.registered_model_version"] == number
    assert len(evaluations) == len(raced), "each version was judged by its own evaluation"
    judged = {v.version for v in client.search_model_versions(f"name='{name}'") if v.tags.get("validation_status")}
    assert aliases.get("challenger") not in {str(v) for v in judged}
    assert [key for key in model.tags or {} if key.startswith("llmflow_decision_lock")] == []


def test_two_mains_at_once_on_the_same_model_leave_one_champion(pg_main: MainRun):
    raced = _race(pg_main, ("rerun_from=log_pyfunc",), ("rerun_from=log_pyfunc",))

    assert len(set(raced)) == 2, raced
    _check_registry_after_race(pg_main.client, f"{NAME}-onnx", raced)


def test_two_different_challengers_at_once_leave_one_champion(pg_main: MainRun):
    raced = _race(pg_main, ("rerun_from=log_pyfunc",), ("rerun_from=log_pyfunc", "int4_block_size=16"))

    assert len(set(raced)) == 2, raced
    _check_registry_after_race(pg_main.client, f"{NAME}-onnx", raced)
