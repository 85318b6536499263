"""ipex-core: the native kernel library behind ``torch.ops.ipex`` and ``ipex.optimize``.

Importing it loads ``ipex_core._C``, which registers the ``ipex`` op namespace
with the PyTorch dispatcher. It changes nothing in stock PyTorch.
"""

from __future__ import annotations

__version__ = "0.1.0"


def _check_torch_version() -> None:
    # Loading _C under another torch fails with unreadable undefined-symbol
    # errors (or worse, loads and crashes later), so compare versions first.
    import torch

    try:
        from ipex_core._build_info import TORCH_VERSION as built
    except ImportError as exc:  # pragma: no cover - only a broken install gets here
        raise ImportError(
            "ipex-core is installed without its native build (ipex_core/_build_info.py is missing). "
            "Reinstall it: pip install --no-build-isolation ./packages/ipex-core"
        ) from exc
    running = torch.__version__
    if running.split("+")[0] != built.split("+")[0]:
        raise ImportError(
            f"ipex-core was built for torch {built} but torch {running} is installed. "
            f"Either install the matching torch (pip install torch=={built.split('+')[0]}) or rebuild "
            "ipex-core against this one: pip install --no-build-isolation --force-reinstall ./packages/ipex-core"
        )


_check_torch_version()

from ipex_core import _C as _C  # noqa: E402  (torch must be imported first, and checked)
from ipex_core import env as env  # noqa: E402
from ipex_core import ops as ops  # noqa: E402
from ipex_core.fusion import enable_onednn_fusion, is_onednn_fusion_enabled  # noqa: E402
from ipex_core.isa import active_isa, cpu_features, max_isa, set_isa  # noqa: E402
from ipex_core.verbose import verbose  # noqa: E402

__all__ = [
    "__version__",
    "active_isa",
    "cpu_features",
    "enable_onednn_fusion",
    "env",
    "is_onednn_fusion_enabled",
    "max_isa",
    "ops",
    "set_isa",
    "verbose",
]
