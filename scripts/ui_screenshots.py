"""Screenshots of what a user finds in the MLflow UI after ``make demo``, for the README.

Starts ``mlflow server`` on the demo's store (``mlflow.db`` in the project folder, with the artifacts its
runs recorded), opens four pages in headless Debian Chromium through Selenium and chromedriver
(``apt-get install chromium chromium-driver``), and writes small PNGs into ``docs/ui/``:

- ``main-run.png``: the experiment's runs, the ``main`` run expanded into its nested steps;
- ``evaluate-traces.png``: the ONNX evaluate run's traces, one per question, with their assessments;
- ``registered-model.png``: the champion's registered model, its description, versions and aliases;
- ``logged-model.png``: the champion's LoggedModel page, with its params and metrics.

Usage: ``python scripts/ui_screenshots.py [--store mlflow.db] [--name tiny-phi3] [--out docs/ui]``.
The browser helpers here are also what ``tests/test_ui.py`` drives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The flags this machine's closed network needs (no background calls home), and a fresh profile per browser.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
WINDOW = (1360, 900)
PAGE_WAIT_S = 120  # how long a page may take to show what we wait for, on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(backend_store_uri: str, log: Path, port: int | None = None) -> Iterator[str]:
    """``mlflow server`` on loopback over ``backend_store_uri`` until the block ends; yields its URL."""
    port = port or free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_store_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()


@contextmanager
def chromium(window: tuple[int, int] = WINDOW) -> Iterator[object]:
    """A headless Debian Chromium under Selenium, with a fresh profile; never downloads a driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="llmflow-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, url: str, text: str) -> str:  # noqa: ANN001 (a selenium WebDriver)
    """Open ``url`` and wait until the page shows ``text``; return the page's visible text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, PAGE_WAIT_S).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    time.sleep(1.5)  # let the last requests render (tables and charts come after the headline)
    return driver.find_element(By.TAG_NAME, "body").text


# Component ids of MLflow 3.17's UI (pinned in requirements.txt); a later UI that renames them leaves the
# panel open or the runs folded, and the screenshot still comes out.
ASSISTANT_CLOSE = "[data-component-id='mlflow.assistant.chat_panel.close']"
RUN_EXPANDER = "[data-component-id$='runnamecellrenderer.tsx_46']"


def click_all(driver, selector: str) -> int:  # noqa: ANN001 (a selenium WebDriver)
    """Click every element ``selector`` finds; return how many clicks took."""
    from selenium.webdriver.common.by import By

    clicked = 0
    for element in driver.find_elements(By.CSS_SELECTOR, selector):
        try:
            element.click()
            clicked += 1
            time.sleep(0.5)
        except Exception:  # noqa: BLE001 (an element that re-rendered under us)
            continue
    return clicked


def expand_nested_runs(driver) -> None:  # noqa: ANN001
    """Unfold the ``main`` run, so its nested step runs show under it."""
    click_all(driver, RUN_EXPANDER)


def scroll_to_text(driver, text: str) -> None:  # noqa: ANN001
    """Scroll the first element whose own text starts with ``text`` to the top of the view."""
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.XPATH, f"//*[starts-with(normalize-space(text()), '{text}')]"):
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
        time.sleep(1)
        return


def demo_ids(tracking_uri: str, name: str) -> dict[str, str]:
    """The experiment, main run, ONNX evaluate run, champion version and its LoggedModel of the demo store."""
    import mlflow
    from mlflow import MlflowClient

    from llmflow.tracking.model_cards import version_model_id
    from llmflow.tracking.names import TAG_EVALUATE_RUN, TAG_STEP

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    onnx = f"{name}-onnx"
    champion = client.get_model_version_by_alias(onnx, "champion")
    evaluate_run = client.get_run(champion.tags[TAG_EVALUATE_RUN])
    experiment_id = evaluate_run.info.experiment_id
    mlflow.set_tracking_uri(tracking_uri)
    (main_run,) = mlflow.search_runs(
        [experiment_id],
        f"tags.`{TAG_STEP}` = 'main'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return {
        "experiment": experiment_id,
        "main_run": main_run.info.run_id,
        "evaluate_run": evaluate_run.info.run_id,
        "registered": onnx,
        "version": str(champion.version),
        "model_id": version_model_id(champion),
    }


def pages(base: str, ids: dict[str, str]) -> list[tuple[str, str, str, str | None]]:
    """(file, URL, text to wait for, text to scroll to) of each screenshot."""
    exp = ids["experiment"]
    return [
        ("main-run.png", f"{base}/#/experiments/{exp}/runs", "main", None),
        ("evaluate-traces.png", f"{base}/#/experiments/{exp}/runs/{ids['evaluate_run']}/traces", "exact_match", None),
        ("registered-model.png", f"{base}/#/models/{ids['registered']}", "champion", "Versions"),
        ("logged-model.png", f"{base}/#/experiments/{exp}/models/{ids['model_id']}", "token_f1", "Description"),
    ]


def shrink(path: Path) -> None:
    """Fewer colours, same pixels: the README's PNGs stay small (matplotlib's Pillow does the quantising)."""
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshots of the MLflow UI on the demo's store.")
    parser.add_argument("--store", type=Path, default=ROOT / "mlflow.db", help="SQLite store made by `make demo`.")
    parser.add_argument("--name", default="tiny-phi3", help="registered_model_name given to main.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui", help="Folder for the PNG files.")
    args = parser.parse_args(argv)
    if not args.store.is_file():
        raise SystemExit(f"error: store '{args.store}' not found; run `make demo` first")
    uri = f"sqlite:///{args.store.resolve()}"
    ids = demo_ids(uri, args.name)
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow_server(uri, Path(tmp) / "server.log") as base,
        chromium() as driver,
    ):
        for file, url, text, scroll_to in pages(base, ids):
            open_page(driver, url, text)
            click_all(driver, ASSISTANT_CLOSE)
            if file == "main-run.png":
                expand_nested_runs(driver)
            if scroll_to:
                scroll_to_text(driver, scroll_to)
            driver.save_screenshot(str(args.out / file))
            shrink(args.out / file)
            print(f"{args.out / file}: {url} ({(args.out / file).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
