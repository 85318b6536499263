import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


@pytest.fixture
def run_python():
    """Run code in a fresh interpreter (import-time behaviour needs a clean process)."""
    return _run_python


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Make a throw-away distribution with entry points visible to importlib.metadata."""
    from ipex import _extensions

    def make(name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None):
        info = tmp_path / f"{name.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for mod, src in (modules or {}).items():
            (tmp_path / f"{mod}.py").write_text(textwrap.dedent(src))
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    _extensions._refresh()
    yield make
    _extensions._refresh()
