"""The ``ipex`` command line (``ipex ...`` or ``python -m ipex ...``)."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata

__all__ = ["main"]

PIECES = ("ipex", "ipex-core", "ipex-llm", "ipex-quant", "ipex-runtime", "ipex-xpu")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_doctor_report() -> dict:
    """Everything ``ipex doctor`` prints, as a dict."""
    report: dict = {"python": sys.version.split()[0], "warnings": []}
    versions = {d: _version(d) for d in PIECES}
    report["pieces"] = versions
    report["transformers"] = _version("transformers")
    try:
        import torch
    except ImportError:
        report["torch"] = None
        report["warnings"].append("torch is not installed: pip install torch==2.13.0")
        return report
    report["torch"] = torch.__version__
    report["omp_threads"] = torch.get_num_threads()
    report["torch_parallel_info"] = torch.__config__.parallel_info().splitlines()[:6]
    ipex_version = versions["ipex"]
    for dist, ver in versions.items():
        if ver is not None and ipex_version is not None and ver != ipex_version:
            report["warnings"].append(
                f"{dist} {ver} does not match ipex {ipex_version}: reinstall the pieces together "
                f"(pip install 'ipex[all]=={ipex_version}')"
            )
    try:
        import ipex_core
    except ImportError as exc:
        report["warnings"].append(f"ipex-core does not import: {exc}")
    else:
        report["cpu_features"] = ipex_core.cpu_features()
        report["isa"] = {"max": ipex_core.max_isa(), "active": ipex_core.active_isa()}
        report["ipex_core_built_with_torch"] = ipex_core._C.built_with_torch
        report["env"] = [v for v in ipex_core.env.describe() if v["value"]]
        from ipex import backends

        report["backends_discovered"] = backends.discovered_backends()
        try:
            specs = backends.load_backends()
            report["backends_active"] = {k: (v.device_type if v else None) for k, v in specs.items()}
        except backends.BackendLoadError as exc:
            report["warnings"].append(str(exc))
    return report


def _print_doctor(report: dict) -> None:
    print(f"python        {report['python']}")
    print(f"torch         {report.get('torch')}")
    print(f"transformers  {report.get('transformers') or 'not installed'}")
    print("ipex pieces:")
    for dist, ver in report["pieces"].items():
        print(f"  {dist:<13} {ver or 'not installed'}")
    if "omp_threads" in report:
        print(f"OpenMP threads {report['omp_threads']}")
    if "isa" in report:
        print(f"ISA           max {report['isa']['max']}, active {report['isa']['active']}")
        flags = [k for k, v in sorted(report["cpu_features"].items()) if v]
        print(f"CPU features  {' '.join(flags)}")
    if "backends_discovered" in report:
        names = [b["name"] for b in report["backends_discovered"]]
        print(f"backends      discovered: {', '.join(names) or 'none'}")
        active = report.get("backends_active", {})
        print(f"              with hardware: {', '.join(k for k, v in active.items() if v) or 'none'}")
    for var in report.get("env", []):
        print(f"env           {var['name']}={var['value']}")
    for w in report["warnings"]:
        print(f"WARNING: {w}")


def _cmd_doctor(args: argparse.Namespace) -> int:
    report = collect_doctor_report()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_doctor(report)
    return 0


def build_parser(load_plugin: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. Sibling packages' subcommands (``ipex.cli`` entry points, e.g. ipex-llm's
    ``generate``) are listed by name; only ``load_plugin``'s is imported and gets its real arguments: loading
    ipex-llm's imports torch and transformers, which made ``ipex --help`` take 2.2 s."""
    parser = argparse.ArgumentParser(
        prog="ipex", description="ipex: fast PyTorch on Intel CPUs. Run 'ipex COMMAND --help' for details."
    )
    from ipex import __version__

    parser.add_argument("--version", action="version", version=f"ipex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser(
        "doctor", help="report versions, installed pieces, backends and CPU features",
        description="Report torch/transformers versions, installed ipex pieces, discovered backends, "
        "CPU features and OpenMP threads; warn about version mismatches.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_cmd_doctor)
    for ep in _plugin_entry_points():
        if ep.name in sub.choices:  # a second entry point of one name (a stale dist-info), or one named doctor
            print(f"WARNING: the ipex.cli plugin {ep.name!r} of {_dist_name(ep)} is ignored: the name is taken",
                  file=sys.stderr)
            continue
        if ep.name == load_plugin:
            ep.load()(sub)  # a failure ends in main() with the reason
            continue
        sub.add_parser(ep.name, help=f"(from {_dist_name(ep)}; 'ipex {ep.name} --help' for its arguments)",
                       add_help=False)
    return parser


def _plugin_entry_points() -> list:
    """The ``ipex.cli`` entry points of the installed sibling packages (read from metadata, not imported)."""
    try:
        from importlib.metadata import entry_points

        return sorted(entry_points(group="ipex.cli"), key=lambda ep: ep.name)
    except Exception as exc:
        print(f"WARNING: the ipex.cli plugins could not be listed: {exc}", file=sys.stderr)
        return []


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or ep.value.split(":")[0].split(".")[0]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command is the first argument that is not an option; only a plugin's own command imports it.
    command = next((a for a in argv if not a.startswith("-")), None)
    plugins = {ep.name: ep for ep in _plugin_entry_points()}
    load = command if command in plugins and command != "doctor" else None
    try:
        parser = build_parser(load_plugin=load)
    except Exception as exc:
        if load is None:
            raise
        # A broken sibling must not take the whole CLI down: its own command fails, with the reason.
        dist = _dist_name(plugins[load])
        print(f"ERROR: 'ipex {load}' comes from {dist}, which failed to load ({type(exc).__name__}: {exc}). "
              f"Reinstall it: pip install --force-reinstall {dist}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)
