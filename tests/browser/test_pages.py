"""The upload page and the HTML report in a real headless Chromium, against a real server.

``onnxprune serve`` runs in embedded mode in a subprocess (its own data dir, a free port on
127.0.0.1). The test uploads a model through the page's form, waits for the job to finish in the
page's job list, opens the report from there and checks its plots were drawn (images with a
nonzero natural size) and that neither page logged a console error. Set ONNXPRUNE_SCREENSHOT_DIR
to keep screenshots of both pages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from onnxprune.workers.html_report import render_report_html
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.pipeline import run_pipeline
from tests.support.chromium import console_errors, find_chromium, full_page_screenshot, start_driver
from tests.support.needs import unavailable
from tests.support.oracle import run_model
from tests.support.small_models import two_branch_model

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("selenium is in the 'test' extra: pip install -e '.[test]'")
    found = find_chromium()
    if found is None:
        unavailable("chromium or chromedriver not found on PATH (Debian: apt-get install chromium chromium-driver)")
    return found


@pytest.fixture
def browser(chromium, tmp_path):
    driver = start_driver(*chromium, tmp_path / "profile")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXPRUNE_")}
    env.update(ONNXPRUNE_DATA_DIR=str(tmp_path / "data"), ONNXPRUNE_RETRY_DELAY_S="0")
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxprune.service.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("ONNXPRUNE_SCREENSHOT_DIR")
    if folder:
        full_page_screenshot(driver, Path(folder) / name)


def drawn_images(driver) -> dict[str, list[int]]:
    """id -> [naturalWidth, naturalHeight, rendered width, rendered height] of every loaded image."""
    return driver.execute_script(
        "const out = {}; for (const img of document.images) { if (img.complete) "
        "out[img.id || img.src.slice(0, 40)] = [img.naturalWidth, img.naturalHeight, img.width, img.height]; }"
        " return out;"
    )


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_upload_a_model_watch_the_job_and_open_its_report(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    model_path = tmp_path / "two_branch.onnx"
    onnx.save(two_branch_model(), model_path)
    browser.get(server + "/")
    assert browser.title == "onnxprune"
    assert console_errors(browser) == []

    browser.find_element(By.ID, "model").send_keys(str(model_path))
    ratio = wait_until(lambda: browser.find_elements(By.ID, "opt-ratio"), 30, "the options form")[0]
    ratio.send_keys("0.5")
    browser.find_element(By.ID, "submit").click()
    wait_until(lambda: "queued" in browser.find_element(By.ID, "form-message").text, 30, "the upload to be accepted")
    row = wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-status=succeeded]"),
        120,
        "the job to succeed in the page's job list",
    )[0]
    assert "→" in row.text  # MACs before -> after
    screenshot(browser, "upload.png")

    row.find_element(By.CSS_SELECTOR, "a.report-link").click()
    wait_until(lambda: len(browser.window_handles) == 2, 30, "the report to open")
    browser.switch_to.window(browser.window_handles[1])
    wait_until(lambda: browser.execute_script("return document.readyState") == "complete", 60, "the report to load")
    images = drawn_images(browser)
    assert {"plot-summary", "plot-channels", "plot-macs"} <= set(images)
    assert all(min(size) > 0 for size in images.values()), images
    assert "Frozen groups" in browser.page_source
    assert console_errors(browser) == []
    screenshot(browser, "report-job.png")
    browser.switch_to.window(browser.window_handles[0])
    assert console_errors(browser) == []


def test_a_report_with_sensitivity_curves_draws_every_plot(browser, tmp_path):
    model = two_branch_model()
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(2).standard_normal((60, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x, labels=run_model(model, {"input": x})[0].argmax(axis=1))
    report = run_pipeline(
        tmp_path / "m.onnx",
        tmp_path / "out.onnx",
        PruneOptions(ratio="auto", benchmark_runs=3),
        data=tmp_path / "d.npz",
    ).report
    page = tmp_path / "report.html"
    page.write_text(render_report_html(report, title="ratio auto"))
    browser.get(page.as_uri())
    images = drawn_images(browser)
    assert set(images) == {"plot-summary", "plot-sensitivity", "plot-channels", "plot-macs"}
    assert all(min(size) > 0 for size in images.values()), images
    assert console_errors(browser) == []


@pytest.mark.slow
def test_a_fine_tuning_job_with_a_data_file_shows_its_progress_and_its_report(browser, server, tmp_path):
    """The form offers every schema option; fine-tuning appears once a data file is chosen."""
    from selenium.webdriver.common.by import By

    model = two_branch_model()
    onnx.save(model, tmp_path / "two_branch.onnx")
    x = np.random.default_rng(3).standard_normal((100, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", input=x, labels=run_model(model, {"input": x})[0].argmax(axis=1))
    browser.get(server + "/")
    wait_until(lambda: browser.find_elements(By.ID, "opt-finetune_steps"), 30, "the options form")
    offered = {
        label.get_attribute("data-option")
        for label in browser.find_elements(By.CSS_SELECTOR, "#options label[data-option]")
    }
    assert offered == set(PruneOptions.model_fields)
    steps = browser.find_element(By.ID, "opt-finetune_steps")
    assert not steps.is_displayed(), "data options stay hidden until a data file is chosen"

    browser.find_element(By.ID, "model").send_keys(str(tmp_path / "two_branch.onnx"))
    browser.find_element(By.ID, "data").send_keys(str(tmp_path / "data.npz"))
    assert steps.is_displayed()
    browser.find_element(By.ID, "opt-ratio").send_keys("0.5")
    steps.clear()
    # Long enough (~4 s here) to be seen running: a job writes its progress at most once a second
    # (jobs/run.py), so a stage shorter than that may never reach the page (40 steps took ~1 s).
    steps.send_keys("1500")
    batch = browser.find_element(By.ID, "opt-batch_size")
    batch.clear()
    batch.send_keys("16")
    browser.find_element(By.ID, "submit").click()
    wait_until(lambda: "queued" in browser.find_element(By.ID, "form-message").text, 30, "the upload to be accepted")

    stages_seen: set[str] = set()
    rows_script = (
        "return [...document.querySelectorAll('#jobs tbody tr')].map((row) => "
        "({status: row.dataset.status, stage: row.cells[3].textContent.trim(), text: row.innerText}))"
    )

    def finished_row():  # read in one script: the page re-renders its rows every second
        for row in browser.execute_script(rows_script):
            if row["status"] == "running":
                stages_seen.add(row["stage"])
            elif row["status"] in ("succeeded", "failed"):
                return row
        return None

    row = wait_until(finished_row, 240, "the fine-tuning job to finish in the page's job list")
    assert row["status"] == "succeeded", row["text"]
    assert any(stage.startswith("finetune") for stage in stages_seen), stages_seen
    assert "accuracy" in row["text"] and "→" in row["text"]
    screenshot(browser, "upload-finetune.png")

    browser.execute_script("document.querySelector('#jobs tbody tr[data-status=succeeded] a.report-link').click()")
    wait_until(lambda: len(browser.window_handles) == 2, 30, "the report to open")
    browser.switch_to.window(browser.window_handles[1])
    wait_until(lambda: browser.execute_script("return document.readyState") == "complete", 60, "the report to load")
    images = drawn_images(browser)
    assert {"plot-summary", "plot-loss"} <= set(images) and min(images["plot-loss"]) > 0, images
    # 100 samples: 60 train, 20 validation, 20 held out
    assert "fine-tuned on 60 training samples" in browser.page_source
    assert console_errors(browser) == []
    screenshot(browser, "report-finetune.png")
