"""Loading the backend plugins before a model is optimized.

Plugins (``ipex.backends`` entry points) register kernels for ``torch.ops.ipex`` ops on
their devices. They are never loaded at ``import ipex``; ``ipex.optimize`` and
``ipex.llm.optimize`` load them (once, honouring ``IPEX_BACKENDS`` and
``IPEX_BACKEND_AUTOLOAD``) so that an installed plugin's kernels are there when the
optimized model runs. Loading is owned by the ``ipex`` package; without it (``ipex-core``
used on its own) there is nothing to load.
"""

from __future__ import annotations

__all__ = ["load_backend_plugins"]


def load_backend_plugins() -> None:
    """Load the allowed backend plugins once (a plugin that fails raises ipex.backends.BackendLoadError)."""
    try:
        from ipex.backends import load_backends
    except ImportError:
        return
    load_backends()
