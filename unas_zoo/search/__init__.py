"""Architecture search: distributions over architectures, gradient estimators, supernets, objectives and the loop.

Deliberately imports nothing: ``import unas_zoo`` (which registers the zoo with timm) must not pay for the search
machinery. Import the submodules directly, e.g. ``from unas_zoo.search.estimators import estimate``.
"""
