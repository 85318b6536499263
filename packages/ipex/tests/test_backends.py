"""Backend plugins through the ipex.backends entry points."""

import sys

import pytest

from ipex import backends

GOOD = """
calls = []
def register():
    from ipex.backends import BackendSpec
    calls.append(1)
    return BackendSpec(name="fakedev", device_type="cpu", ops=("rms_norm",))
def absent():
    return None
"""
BAD = """
def register():
    raise RuntimeError("driver exploded")
"""


def test_backends_not_loaded_at_import(run_python):
    r = run_python(
        """
        import sys, ipex
        print("LOADED", "ipex.backends" in sys.modules)
        """
    )
    assert "LOADED False" in r.stdout


def test_register_spec_and_none(fake_dist, monkeypatch):
    monkeypatch.delenv("IPEX_BACKENDS", raising=False)
    monkeypatch.delenv("IPEX_BACKEND_AUTOLOAD", raising=False)
    fake_dist("fake-backend", {"ipex.backends": {"fakedev": "fake_backend_mod:register",
                                                 "nohw": "fake_backend_mod:absent"}},
              {"fake_backend_mod": GOOD})
    specs = backends.load_backends(reload=True)
    assert specs["fakedev"].device_type == "cpu" and specs["fakedev"].ops == ("rms_norm",)
    assert specs["nohw"] is None
    import fake_backend_mod

    assert backends.load_backends() == specs  # cached: register() not called again
    assert fake_backend_mod.calls == [1]
    assert any(b["name"] == "fakedev" and b["distribution"] == "fake-backend" for b in backends.discovered_backends())


def test_allow_list_and_autoload_off(fake_dist, monkeypatch):
    fake_dist("fake-backend", {"ipex.backends": {"fakedev": "fake_backend_mod:register", "broken": "bad_mod:register"}},
              {"fake_backend_mod": GOOD, "bad_mod": BAD})
    monkeypatch.setenv("IPEX_BACKENDS", "fakedev")
    assert "broken" not in backends.load_backends(reload=True)
    monkeypatch.setenv("IPEX_BACKEND_AUTOLOAD", "0")
    assert backends.load_backends(reload=True) == {}


def test_failing_plugin_names_itself(fake_dist, monkeypatch):
    monkeypatch.delenv("IPEX_BACKENDS", raising=False)
    monkeypatch.delenv("IPEX_BACKEND_AUTOLOAD", raising=False)
    fake_dist("broken-backend", {"ipex.backends": {"broken": "bad_mod:register"}}, {"bad_mod": BAD})
    with pytest.raises(backends.BackendLoadError) as info:
        backends.load_backends(reload=True)
    msg = str(info.value)
    assert "'broken'" in msg and "broken-backend" in msg and "driver exploded" in msg
    assert "IPEX_BACKEND_AUTOLOAD=0" in msg and "IPEX_BACKENDS=" in msg


def test_wrong_return_type(fake_dist, monkeypatch):
    monkeypatch.delenv("IPEX_BACKENDS", raising=False)
    monkeypatch.delenv("IPEX_BACKEND_AUTOLOAD", raising=False)
    fake_dist("odd-backend", {"ipex.backends": {"odd": "odd_mod:register"}}, {"odd_mod": "def register():\n    return 3\n"})
    with pytest.raises(backends.BackendLoadError, match="must return a BackendSpec or None"):
        backends.load_backends(reload=True)


def test_optimize_loads_installed_plugins(fake_dist, monkeypatch):
    # Nothing called load_backends but `ipex doctor`: an installed plugin's kernels were never registered.
    import torch

    import ipex

    monkeypatch.delenv("IPEX_BACKENDS", raising=False)
    monkeypatch.delenv("IPEX_BACKEND_AUTOLOAD", raising=False)
    fake_dist("fake-backend", {"ipex.backends": {"fakedev": "fake_backend_mod:register"}}, {"fake_backend_mod": GOOD})
    monkeypatch.setattr(backends, "_loaded", None)  # as in a fresh process
    monkeypatch.delitem(sys.modules, "fake_backend_mod", raising=False)  # an earlier test's copy
    ipex.optimize(torch.nn.Sequential(torch.nn.Linear(4, 4)).eval())
    import fake_backend_mod

    assert fake_backend_mod.calls == [1]
    assert "fakedev" in backends.load_backends()


def test_allow_list_typo_warns(fake_dist, monkeypatch):
    fake_dist("fake-backend", {"ipex.backends": {"fakedev": "fake_backend_mod:register"}}, {"fake_backend_mod": GOOD})
    monkeypatch.delenv("IPEX_BACKEND_AUTOLOAD", raising=False)
    monkeypatch.setenv("IPEX_BACKENDS", "fakdev")
    with pytest.warns(UserWarning, match=r"IPEX_BACKENDS names \['fakdev'\], which match no installed backend"):
        backends.load_backends(reload=True)
