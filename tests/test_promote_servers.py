"""promote between two real tracking servers on loopback (``mlflow server`` on SQLite, proxied artifacts)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.servers import free_port, running

pytestmark = pytest.mark.integration


def _server(root: Path, name: str) -> list[str]:
    return [
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / f'{name}.db'}",
        "--artifacts-destination",
        str(root / f"{name}-artifacts"),
        "--host",
        "127.0.0.1",
        "--workers",
        "1",
    ]


def test_promote_between_two_tracking_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.test_promote import REPORT, _champion, _promote

    dev_port, prod_port = free_port(), free_port()
    with (
        running([*_server(tmp_path, "dev"), "--port", str(dev_port)], dev_port, "", tmp_path / "dev.log") as dev,
        running([*_server(tmp_path, "prod"), "--port", str(prod_port)], prod_port, "", tmp_path / "prod.log") as prod,
    ):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", dev)
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(dev)
        try:
            mlflow.set_experiment("dev")
            version = _champion("tiny-onnx")
            result = _promote("tiny-onnx", prod, "phi3-prod")
        finally:
            while mlflow.active_run():
                mlflow.end_run()
        assert result.copied and result.target_registry_uri == prod
        target = MlflowClient(tracking_uri=prod, registry_uri=prod)
        copy = target.get_model_version_by_alias("phi3-prod", "champion")
        assert copy.description == REPORT
        assert copy.tags["validation_status"] == "passed"
        assert copy.tags["llmflow_promoted_from"] == f"{dev}#models:/tiny-onnx/{version}"
        assert copy.source.startswith("models:/m-")  # a LoggedModel of the production server
        logged = target.get_logged_model(copy.source.removeprefix("models:/"))
        assert (logged.name, logged.params["precision"]) == ("tiny-phi3-int4-cpu", "int4")
        mlflow.set_tracking_uri(prod)
        try:
            model = mlflow.pyfunc.load_model("models:/phi3-prod@champion")
            assert model.predict(pd.DataFrame({"prompt": ["madrid"]})) == ["MADRID"]
        finally:
            mlflow.set_tracking_uri(None)
