"""The ipex command line."""

import importlib.util
import json
import subprocess
import sys

import pytest

from ipex import cli


def test_help_everywhere(capsys):
    for argv in (["--help"], ["doctor", "--help"]):
        try:
            cli.main(argv)
        except SystemExit as e:
            assert e.code == 0
        assert "usage: ipex" in capsys.readouterr().out


def test_doctor_text(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "ipex-core", "ISA", "CPU features", "OpenMP threads", "backends"):
        assert needle in out


def test_doctor_json_via_python_m():
    r = subprocess.run([sys.executable, "-m", "ipex", "doctor", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["pieces"]["ipex"] == "0.1.0" and report["pieces"]["ipex-core"] == "0.1.0"
    assert report["torch"].startswith("2.13")
    assert report["cpu_features"]["avx2"] in (True, False)
    assert isinstance(report["omp_threads"], int)


def test_doctor_warns_on_version_mismatch(monkeypatch):
    real = cli._version
    monkeypatch.setattr(cli, "_version", lambda d: "9.9.9" if d == "ipex-core" else real(d))
    report = cli.collect_doctor_report()
    assert any("ipex-core 9.9.9 does not match ipex" in w for w in report["warnings"])


def test_version_and_bad_generate_arguments(capsys):
    from ipex import __version__, cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ipex {__version__}"
    if importlib.util.find_spec("ipex_llm") is None:
        return
    for bad in ("-3", "0", "many"):  # refused by argparse, before any model loads
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["generate", "--max-new-tokens", bad, "hi"])
        assert exit_info.value.code == 2
        assert "--max-new-tokens" in capsys.readouterr().err


def test_help_does_not_import_the_plugins():
    """'ipex --help' lists a sibling's subcommand from its entry point without importing it (ipex-llm's import
    of torch and transformers made it take 2.2 s); the subcommand's own --help still shows its arguments."""
    code = ("import sys\nfrom ipex import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', 'ipex_llm' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "LOADED False False" in r.stdout and "doctor" in r.stdout
    if importlib.util.find_spec("ipex_llm") is None:
        return
    assert "generate" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ipex", "generate", "--help"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "--max-new-tokens" in r.stdout, r.stderr


def test_broken_plugin_fails_its_own_command_only(monkeypatch, capsys):
    """A sibling whose register() fails (here after adding its parser) must not take the CLI down: its command
    returns 1 with the reason (it crashed with "conflicting subparser", or gave a usage error for --help), and
    the rest of the CLI works. A second entry point of a taken name is ignored with a warning."""

    class FakeEntryPoint:
        def __init__(self, name, value="broken_pkg.cli:register"):
            self.name, self.value, self.dist = name, value, None

        def load(self):
            def register(sub):
                sub.add_parser(self.name)
                raise RuntimeError("half-registered")
            return register

    monkeypatch.setattr(cli, "_plugin_entry_points", lambda: [FakeEntryPoint("doctor"), FakeEntryPoint("widget")])
    for argv in (["widget"], ["widget", "--help"], ["widget", "some text"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert "'ipex widget' comes from broken_pkg, which failed to load (RuntimeError: half-registered)" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0 and "widget" in captured.out and "doctor" in captured.out
    assert "'doctor' of broken_pkg is ignored: the name is taken" in captured.err
