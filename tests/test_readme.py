"""The README's quick tour runs as written (with fewer images and epochs)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour() -> str:
    text = README.read_text()
    section = text.split("## Quick tour", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_quick_tour_runs(tmp_path, monkeypatch):
    code = _tour()
    code = re.sub(r"n=\d+", "n=48", code)
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    code = re.sub(r"bootstrap=\d+", "bootstrap=20", code)
    assert "wb.attention_maps" in code and "wb.communities" in code
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(code, str(README), "exec"), {"__name__": "readme_tour"})
    assert (tmp_path / "outputs" / "overlay.png").exists() and (tmp_path / "outputs" / "overlay.json").exists()
