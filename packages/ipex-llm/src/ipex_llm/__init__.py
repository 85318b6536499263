"""ipex-llm: ``ipex.llm`` (``ipex.llm.modules``, ``ipex.llm.functional``).

Importing ``ipex.llm`` gives this very module (``ipex.llm is ipex_llm``).
"""

from __future__ import annotations

from ipex_llm import functional, modules
from ipex_llm.optimize import optimize

__version__ = "0.1.0"
__all__ = ["functional", "modules", "optimize", "__version__"]
