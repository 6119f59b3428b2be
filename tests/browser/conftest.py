"""Browser tests: the console served by the real stack (gunicorn, a Celery worker and beat
on the embedded default), driven in Debian's headless Chromium through Selenium."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import CHROMEDRIVER, CHROMIUM, Stack, runner_module
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from service_support import missing_on_this_machine


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing_on_this_machine("needs Debian's chromium and chromium-driver (make test installs them)")
    runner = runner_module()
    data_dir = Path(tempfile.mkdtemp(prefix="console-"))
    port = runner.free_port()
    settings = runner.Settings(data_dir, port, runner.control_plane_env(data_dir, None, None))
    (data_dir / "logs").mkdir()
    processes = runner.Processes(data_dir / "logs")
    try:
        runner.manage(settings, "migrate", "--noinput")
        runner.start_control_plane(processes, settings, 3)
        yield Stack(settings.url, data_dir, settings.env, runner, processes)
    finally:
        processes.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-")
    download_dir = tempfile.mkdtemp(prefix="downloads-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1366,900",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": download_dir, "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.download_dir = download_dir  # type: ignore[attr-defined]
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(download_dir, ignore_errors=True)
