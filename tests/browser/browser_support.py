"""Helpers of the browser tests: the stack under test and screenshots.

Screenshots of the main pages go to ``screenshots/`` at the top of the repo (not committed).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from selenium import webdriver

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "screenshots"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def runner_module() -> ModuleType:
    """deploy/run_local.py: the same process handling as ``make demo``."""
    spec = importlib.util.spec_from_file_location("run_local", REPO / "deploy" / "run_local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_local"] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Stack:
    url: str
    data_dir: Path
    env: dict[str, str]
    runner: ModuleType
    processes: object

    def manage(self, *arguments: str) -> str:
        settings = self.runner.Settings(self.data_dir, 0, self.env)
        return str(self.runner.manage(settings, *arguments))

    def create_user(self, name: str, role: str, institution: str | None = None) -> str:
        """A user with a random password, written to a file only this test reads."""
        password = f"pw-{os.urandom(12).hex()}"
        password_file = self.data_dir / f"{name}.password"
        password_file.write_text(password)
        arguments = ["create_user", name, "--role", role, "--password-file", str(password_file)]
        if institution:
            arguments += ["--institution", institution]
        self.manage(*arguments)
        return password


def screenshot(driver: webdriver.Chrome, name: str, width: int = 1366) -> Path:
    """Save the whole page as screenshots/<name>.png for a reviewer to look at."""
    SCREENSHOTS.mkdir(exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 700)")
    driver.set_window_size(width, min(int(height) + 40, 4000))
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1366, 900)
    return path
