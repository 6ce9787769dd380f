"""Genotypes: the schema (``schema.py``) and the zoo's YAML files beside it."""
from .schema import *  # noqa: F401,F403
from .schema import __all__  # noqa: F401
