"""ipex-llm: ``ipex.llm`` (``ipex.llm.modules``, ``ipex.llm.functional``).

Importing ``ipex.llm`` gives this very module (``ipex.llm is ipex_llm``).
"""

from __future__ import annotations

from ipex_llm import functional, modules

__version__ = "0.1.0"
__all__ = ["functional", "modules", "__version__"]
