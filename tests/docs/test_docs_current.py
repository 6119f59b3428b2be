"""The guides describe what the platform does now: what has shipped is not "on the roadmap"
(docs/ROADMAP.md is the one place for what is next)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


@pytest.mark.parametrize("guide", [g for g in GUIDES if g.name != "ROADMAP.md"], ids=lambda g: g.name)
def test_a_guide_points_to_the_roadmap_instead_of_promising(guide: Path) -> None:
    assert "on the roadmap" not in guide.read_text(encoding="utf-8").lower()
