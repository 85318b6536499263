"""import ipex: cheap, lazy, and the core API."""

import importlib.util

import pytest

import ipex


def test_import_ipex_is_cheap(run_python):
    r = run_python(
        """
        import sys, ipex
        heavy = [m for m in ("torch", "transformers", "ipex_core", "ipex_llm", "ipex_quant",
                             "ipex_runtime", "ipex_xpu") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def test_core_api_resolves_lazily():
    import ipex_core

    assert ipex.verbose is ipex_core.verbose
    assert ipex.enable_onednn_fusion is ipex_core.enable_onednn_fusion
    assert ipex.verbose.VERBOSE_ON == 1
    assert ipex.cpu_features()["avx2"] in (True, False)


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ipex.nope


def test_dir_lists_public_names():
    names = dir(ipex)
    for n in ("verbose", "enable_onednn_fusion", "llm", "quantization", "xpu", "cpu"):
        assert n in names


def test_env_module_lists_every_variable():
    names = set(ipex.env.VARIABLES)
    assert {"IPEX_ISA", "IPEX_BACKENDS", "IPEX_BACKEND_AUTOLOAD"} <= names
    assert all(v.meaning for v in ipex.env.VARIABLES.values())
    with pytest.raises(KeyError, match="not an ipex environment variable"):
        ipex.env.get("IPEX_TYPO")


@pytest.mark.skipif(importlib.util.find_spec("ipex_llm") is not None, reason="ipex-llm is installed")
def test_missing_piece_messages(run_python):
    # Run in the minimal nox session, where only ipex and ipex-core are installed.
    for alias, dist in [("llm", "ipex-llm"), ("quantization", "ipex-quant"), ("xpu", "ipex-xpu")]:
        if importlib.util.find_spec(dist.replace("-", "_")) is not None:
            continue
        with pytest.raises(AttributeError, match=rf"pip install {dist}"):
            getattr(ipex, alias)
        assert not hasattr(ipex, alias) and alias not in dir(ipex)
        r = run_python(f"import ipex.{alias}")
        assert f"ipex.{alias} is provided by the '{dist}' package, which is not installed: pip install {dist}" in r.stderr


def test_missing_piece_simulated(run_python):
    # Works whatever is installed: hide the entry points in a fresh process.
    r = run_python(
        """
        import ipex._extensions as e
        e._table = {}
        import ipex
        for stmt in ("import ipex.llm", "from ipex.llm.modules import RMSNorm", "ipex.llm",
                     "import ipex.cpu.runtime", "ipex.cpu.runtime"):
            try:
                exec(stmt)
            except (ModuleNotFoundError, AttributeError) as exc:
                print("ERR", stmt, "|", type(exc).__name__, exc)
        print("HASATTR", hasattr(ipex, "llm"), getattr(ipex.cpu, "runtime", None), "llm" in dir(ipex))
        """
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("ERR")]
    assert len(lines) == 5, r.stdout
    assert all("pip install ipex-llm" in line for line in lines[:3])
    assert all("pip install ipex-runtime" in line for line in lines[3:])
    # Imports raise ModuleNotFoundError; attributes raise AttributeError (hasattr / getattr with a default work).
    assert [line.split("|")[1].split()[0] for line in lines] == ["PieceNotInstalledError", "PieceNotInstalledError",
                                                               "PieceNotInstalledAttributeError",
                                                               "PieceNotInstalledError",
                                                               "PieceNotInstalledAttributeError"]
    assert "HASATTR False None False" in r.stdout


def test_star_import_with_pieces_missing(run_python):
    # __all__ used to name every first-party piece, so `from ipex import *` failed wherever one was not
    # installed; it now names the installed ones (here: none, the entry points hidden).
    r = run_python(
        """
        import ipex._extensions as e
        e._table = {}
        from ipex import *
        import ipex
        print(sorted(ipex.__all__))
        print(callable(optimize), callable(verbose))
        """
    )
    assert r.returncode == 0, r.stderr
    names = r.stdout.splitlines()[0]
    assert "'optimize'" in names and "'llm'" not in names and "'quantization'" not in names
    assert r.stdout.splitlines()[1] == "True True"


def test_first_party_name_cannot_be_claimed(fake_dist):
    fake_dist("evil-dist", {"ipex.extensions": {"llm": "evil_llm", "quantization": "evil_q"}})
    from ipex import _extensions

    with pytest.warns(RuntimeWarning, match="belongs to 'ipex-llm'"):
        table = _extensions.installed_extensions()
    assert table.get("llm") is None or table["llm"].module == "ipex_llm"
    assert table.get("quantization") is None or table["quantization"].module == "ipex_quant"


def test_third_party_extension_is_aliased(fake_dist):
    fake_dist("thirdparty-ext", {"ipex.extensions": {"contrib": "ipex_contrib_demo"}},
              {"ipex_contrib_demo": "VALUE = 42\n"})
    import importlib
    import sys

    sys.modules.pop("ipex.contrib", None)
    mod = importlib.import_module("ipex.contrib")
    assert mod is importlib.import_module("ipex_contrib_demo") and mod.VALUE == 42
    assert ipex.contrib is mod
    sys.modules.pop("ipex.contrib", None)
    ipex.__dict__.pop("contrib", None)


def test_boolean_variables_read_alike(monkeypatch):
    """`IPEX_BACKEND_AUTOLOAD=` (set but empty) turned plugins off; only 0/false/no/off should."""
    for value, expected in (("", True), ("1", True), ("yes", True), ("0", False), ("off", False), ("FALSE", False)):
        monkeypatch.setenv("IPEX_BACKEND_AUTOLOAD", value)
        assert ipex.env.get_bool("IPEX_BACKEND_AUTOLOAD") is expected, value
