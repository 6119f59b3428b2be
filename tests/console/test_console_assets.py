"""The console's assets: every file is served by the project, nothing from elsewhere, and
the markup fits its Content-Security-Policy (no inline script or style)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

CONSOLE = Path(__file__).resolve().parents[2] / "platform" / "console"
TEMPLATES = sorted((CONSOLE / "templates").rglob("*.html"))
OWN_STATIC = sorted(
    path for path in (CONSOLE / "static").rglob("*") if path.is_file() and "vendor" not in path.parts
)
#: The one URL-shaped string allowed: the SVG namespace, an identifier that is never fetched.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
#: The agent's command line on the token page names no server: agent.toml does.
URL = re.compile(r"https?://[^\s\"'<>)]+")


def test_there_are_templates_and_assets_to_check() -> None:
    names = {path.name for path in OWN_STATIC}
    assert {"console.css", "console.js", "job.js"} <= names
    assert len(TEMPLATES) >= 15


@pytest.mark.parametrize("path", TEMPLATES + OWN_STATIC, ids=lambda path: path.name)
def test_no_external_url(path: Path) -> None:
    urls = [url for url in URL.findall(path.read_text()) if url != SVG_NAMESPACE]
    assert urls == []


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda path: path.name)
def test_templates_have_no_inline_script_or_style(path: Path) -> None:
    text = path.read_text()
    scripts = re.findall(r"<script\b[^>]*>", text)
    assert all("src=" in tag for tag in scripts), scripts
    assert " style=" not in text
    assert "<style" not in text
    assert not re.search(r"\son[a-z]+=", text), "inline event handler"


def test_chart_library_is_served_by_the_project(client: Client) -> None:
    path = finders.find("console/vendor/chart.umd.min.js")
    assert path is not None
    assert "Chart.js v4" in Path(path).read_text()[:200]
    for asset in ("console/console.css", "console/console.js", "console/job.js"):
        assert finders.find(asset) is not None, asset


@pytest.mark.django_db
def test_job_page_loads_only_local_scripts(coordinator: Client, draft_job: object) -> None:
    html = coordinator.get(f"/jobs/{draft_job.pk}/").content.decode()  # type: ignore[attr-defined]
    sources = re.findall(r'<script src="([^"]+)"', html)
    assert sources == [
        "/static/console/console.js",
        "/static/console/vendor/chart.umd.min.js",
        "/static/console/job.js",
    ]
    stylesheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
    assert stylesheets == ["/static/console/console.css"]
