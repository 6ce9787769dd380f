"""timm entrypoints of the zoo; importing this module registers them with timm."""
from . import darts_cells, mbconv  # noqa: F401
