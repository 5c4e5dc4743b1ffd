"""Unnormalized models behind one interface (:class:`EnergyModel`).

The estimators of :mod:`sparsegauss.estimators` are written against
:class:`EnergyModel`; :class:`GridGaussianEnergy` is the grid Gaussian on the library's
sparse kernels, :class:`DeepEnergy` a two-layer deep energy model in NumPy.
"""

from .base import EnergyModel, FrozenModel
from .deep_energy import DeepEnergy
from .grid_gaussian import GridGaussianEnergy

__all__ = ["DeepEnergy", "EnergyModel", "FrozenModel", "GridGaussianEnergy"]
