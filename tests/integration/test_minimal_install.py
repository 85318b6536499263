"""Only ipex + ipex-core installed (the `minimal` nox session): errors name the fix."""

import importlib.util
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ipex_llm") is not None, reason="runs where ipex-llm is not installed"
)


def test_core_works_and_pieces_fail_with_fix():
    code = textwrap.dedent(
        """
        import sys, torch, ipex
        x = torch.randn(2, 64)
        with ipex.verbose(ipex.verbose.VERBOSE_OFF):
            torch.ops.ipex.rms_norm(x, torch.ones(64), 1e-6)
        msgs = []
        for stmt in ("import ipex.llm", "ipex.quantization", "import ipex.cpu.runtime", "ipex.xpu"):
            try:
                exec(stmt)
            except (ModuleNotFoundError, AttributeError) as e:  # import statement / attribute
                msgs.append(str(e))
        print("\\n".join(msgs))
        print("IMPORTED", sorted(m for m in sys.modules if m.startswith(("ipex_", "transformers"))))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for dist in ("ipex-llm", "ipex-quant", "ipex-runtime", "ipex-xpu"):
        assert f"pip install {dist}" in r.stdout
    imported = r.stdout.split("IMPORTED", 1)[1]
    assert "transformers" not in imported and "ipex_llm" not in imported
