"""timm entrypoints of the zoo; importing this module registers them with timm."""
from . import darts_cells, mbconv  # noqa: F401
from ._builder import WeightsNotPublishedError, export_model_args

__all__ = ['darts_cells', 'mbconv', 'WeightsNotPublishedError', 'export_model_args']
