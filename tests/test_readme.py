"""The README's two set-up commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in script if line.startswith(("python3 -m venv", ".venv/bin/python -m pytest"))]
    assert len(commands) == 2
    for command in commands:
        assert f"\n{command}\n" in readme, command
