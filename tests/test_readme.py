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


def _python_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.strip() == "```python":
            inside, current = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_readme_examples_run():
    import torch

    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for block in blocks:
            namespace: dict = {}
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
            assert any(isinstance(v, torch.Tensor) or isinstance(v, tuple) for v in namespace.values())
