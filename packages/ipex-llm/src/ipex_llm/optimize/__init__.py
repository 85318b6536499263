"""``ipex.llm.optimize`` and the model-family table it uses."""

from ipex_llm.optimize.api import optimize
from ipex_llm.optimize.families import REMOTE_CODE_FAMILIES, SUPPORTED_MODEL_TYPES

__all__ = ["REMOTE_CODE_FAMILIES", "SUPPORTED_MODEL_TYPES", "optimize"]
