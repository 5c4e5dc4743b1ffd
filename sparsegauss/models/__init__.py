"""Unnormalized models behind one interface (:class:`EnergyModel`).

The estimators of :mod:`sparsegauss.estimators` are written against
:class:`EnergyModel`; :class:`GridGaussianEnergy` is the grid Gaussian on the library's
sparse kernels.
"""

from .base import EnergyModel, FrozenModel
from .grid_gaussian import GridGaussianEnergy

__all__ = ["EnergyModel", "FrozenModel", "GridGaussianEnergy"]
