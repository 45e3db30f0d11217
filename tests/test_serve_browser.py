"""The web page at ``/`` in a real browser (selenium + headless Debian chromium): upload a file, wait for the
answer, and check that the class and probability shown equal the API's; a screenshot is saved.

Skipped when chromium/chromedriver are absent, except under MEDDX_REQUIRE_SHARED=1 (CI), where that fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from .conftest import require_module
from .fuzz_corpus import reference_image

require_module("fastapi")
require_module("uvicorn")
require_module("httpx")

from .test_serve import _png, tiny_serve_run  # noqa: E402


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        msg = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("MEDDX_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; MEDDX_REQUIRE_SHARED=1 forbids skipping", pytrace=False)
        pytest.skip(msg)
    return chromium, driver


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``meddx serve`` on 127.0.0.1 in a thread (uvicorn), stopped after the module."""
    import uvicorn

    from meddx.serve.app import create_app

    app = create_app([tiny_serve_run(tmp_path_factory)], runtime="torch")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    chromium, driver_path = _browser_paths()
    webdriver = require_module("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_shows_the_apis_answer(server, browser, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = tmp_path / "slice.png"
    image.write_bytes(_png(reference_image()))
    api = httpx.post(f"{server}/v1/models/tiny/predict", files={"file": ("slice.png", image.read_bytes())},
                     timeout=30).json()
    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
    assert "no nodule" in browser.find_element(By.ID, "card").text  # the model card is shown
    Select(browser.find_element(By.ID, "method")).select_by_value("gradcam")
    upload = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false;", upload)  # a hidden <input type=file> takes no keys
    upload.send_keys(str(image))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "result-label").text == api["label"]
    assert browser.find_element(By.ID, "result-prob").text == f"{api['probability']:.4f}"
    assert float(browser.find_element(By.ID, "answer").get_attribute("data-probability")) == pytest.approx(
        api["probability"], abs=1e-6)
    bars = {b.get_attribute("data-cls"): float(b.find_element(By.CLASS_NAME, "pval").text)
            for b in browser.find_elements(By.CSS_SELECTOR, "#bars .bar")}
    assert bars == pytest.approx(api["probabilities"], abs=1e-3)
    loaded = "return [arguments[0].naturalWidth, arguments[1].naturalWidth]"
    widths = browser.execute_script(loaded, browser.find_element(By.ID, "input-img"),
                                    browser.find_element(By.ID, "overlay-img"))
    assert min(widths) > 0  # the input and the heat map are both drawn
    shot = Path(os.environ.get("MEDDX_SCREENSHOT_DIR", tmp_path)) / "serve_page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
