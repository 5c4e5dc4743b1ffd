"""Contrastive divergence (Hinton 2002) for the grid Gaussian.

The gradient of the negative mean log-likelihood is ``½ adjoint(m ⊙ (S − Σ))``; CD
replaces the model's ``Σ`` on the pattern by the second moments of *negative samples*:

    ∂(−ℓ)/∂θ ≈ ½ adjoint(m ⊙ (T_data − T_negatives)) / n.

Negative samples come from k sweeps (``cd_steps``) of a chromatic Gibbs sampler started
at the data batch (CD-k), from persistent chains carried across steps (PCD, Tieleman
2008), or exactly from the Cholesky factor. Gibbs colourings: a checkerboard for 4
neighbours, a 2×2 pattern (4 colours) for 8, so that no two pixels of one colour are
neighbours and each colour class is updated in parallel.
"""

import numpy as np

from .. import _kernels
from ..stats import pattern_moments, quadratic_forms

__all__ = ["cd_gradient", "colouring", "gibbs_sample"]


def colouring(grid):
    """Colour of every pixel and the number of colours (no two neighbours share one)."""
    rows, cols = np.divmod(np.arange(grid.n_pixels), grid.shape[1])
    if grid.stencil == 4:
        return ((rows + cols) % 2).astype(np.int64), 2
    return (2 * (rows % 2) + cols % 2).astype(np.int64), 4


def gibbs_sample(start, grid, theta, n_sweeps, random_state=None):
    """Run ``n_sweeps`` chromatic Gibbs sweeps for ``N(0, Λ(θ)⁻¹)`` from ``start``.

    Parameters
    ----------
    start : ndarray, shape (n, D)
        Chains' initial states (copied).
    theta : ndarray
        Must have a positive diagonal (the conditional precisions).

    Returns
    -------
    ndarray, shape (n, D)
    """
    rng = np.random.default_rng(random_state)
    chains = np.array(start, dtype=np.float64, order="C", copy=True)
    colours, n_colours = colouring(grid)
    normals = rng.standard_normal((n_sweeps,) + chains.shape)
    _kernels.gibbs_sweeps(chains, grid.fields(theta), grid.shifts, colours, n_colours, normals)
    return chains


def cd_gradient(theta, grid, data, negatives, normalizer):
    """Exact negative mean log-likelihood of ``data`` and the CD gradient.

    Parameters
    ----------
    theta : ndarray
    grid : GridParameterization
    data, negatives : ndarray, shape (n, D)
        Centred data batch and the negative samples.
    normalizer : GridNormalizer
        Gives the exact log Z (so the reported loss is the true objective) and raises
        ``NotPositiveDefiniteError`` outside the cone.

    Returns
    -------
    loss : float
    grad : ndarray
    """
    log_z = normalizer.log_partition(theta)
    fields = grid.fields(theta)
    loss = log_z + 0.5 * float(np.mean(quadratic_forms(data, grid, fields)))
    difference = (pattern_moments(data, grid) / len(data)
                  - pattern_moments(negatives, grid) / len(negatives))
    return loss, 0.5 * grid.adjoint(grid.multiplicity[:, None] * difference)
