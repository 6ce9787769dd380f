"""unas_zoo: UNAS architecture search and its zoo of searched architectures as timm models.

Importing the package registers every model with timm (``timm.create_model('unas_cifar10')``).
"""
from . import genotypes
from . import models  # noqa: F401  (registers the timm entrypoints)
from .complexity import complexity
from .genotypes import GenotypeError, load as load_genotype

__version__ = '0.1.0'
__all__ = ['genotypes', 'models', 'complexity', 'load_genotype', 'GenotypeError', '__version__']
