"""The ``IPEX_*`` environment variables (defined once, in ``ipex_core.env``)."""

from ipex_core.env import VARIABLES, EnvVar, describe, get, get_bool

__all__ = ["VARIABLES", "EnvVar", "describe", "get", "get_bool"]
