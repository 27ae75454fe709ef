"""The MLflow UI in a real browser: a LoggedModel page shows the figures evaluate links to the model.

Starts ``mlflow server`` on loopback over a store whose model carries our metrics (logged with
``model_id=`` as ``evaluate`` logs them) and opens the model's page in headless Debian Chromium
(``scripts/ui_screenshots.py``'s helpers, Selenium over chromedriver). ``.ci/run`` installs the browser.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import pytest

from llmflow.evaluation.scoring import SCORED_METRICS
from scripts.ui_screenshots import CHROMEDRIVER, CHROMIUM, chromium, mlflow_server, open_page

pytestmark = pytest.mark.integration
INSTALL_HINT = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return list(model_input["prompt"])


@pytest.fixture
def browser_available() -> None:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail(f"{INSTALL_HINT}; .ci/run should have installed it")
        pytest.skip(INSTALL_HINT)


def test_the_logged_model_page_shows_our_metrics(browser_available, tmp_path: Path, _empty_store: Path):
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("ui", artifact_location=(tmp_path / "artifacts").as_uri())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id):
            info = mlflow.pyfunc.log_model(
                name="tiny-phi3-int4-cpu",
                python_model=Echo(),
                pip_requirements=["mlflow"],
                params={"precision": "int4"},
            )
            figures = {"token_f1": 0.875, "latency_p50_s": 0.0123, "perplexity": 6906.0}
            assert set(figures) <= set(SCORED_METRICS)
            mlflow.log_metrics(figures, model_id=info.model_id)
    finally:
        mlflow.set_tracking_uri(previous)

    with mlflow_server(uri, tmp_path / "server.log") as base, chromium() as driver:
        text = open_page(driver, f"{base}/#/experiments/{experiment_id}/models/{info.model_id}", "tiny-phi3-int4-cpu")
        text = open_page(driver, driver.current_url, "token_f1")

    assert "Metrics (3)" in text, text[:2000]
    for name in figures:
        assert name in text, name
    assert "0.875" in text
