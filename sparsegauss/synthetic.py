"""Known grid Gaussians of any size, with exact samples: the ground truth of the scaling
benchmarks and the consistency tests.

The precision is random but always positive definite, by strict diagonal dominance:

    Λ_pp = 1 + u_p,  u_p ~ U(0, 1),
    Λ_pq = −c_pq · s / (k − 1),  c_pq ~ U(0, 1)  for each grid neighbour q of p,

with ``k`` the stencil's number of terms per pixel (3 for 4 neighbours, 5 for 8) and
``s = coupling ∈ [0, ½]``. Each pixel has at most ``2 (k − 1)`` neighbours, so
``Σ_q |Λ_pq| ≤ 2 s ≤ 1 ≤ Λ_pp``, with equality only on a null set: Λ is strictly
diagonally dominant, hence positive definite, at any grid size. Samples are ``x = L⁻ᵀ ε`` from the sparse factor
(:meth:`sparsegauss.GridGaussian.sample`), exact at any size.
"""

import numpy as np

from .grid import STENCIL_OFFSETS, GridParameterization, check_grid_shape

__all__ = ["make_grid_gaussian"]


def make_grid_gaussian(shape, n_samples=0, *, stencil=4, tying="untied", coupling=0.45,
                       random_state=None):
    """A random grid Gaussian and exact samples from it.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)``.
    n_samples : int, default=0
        Samples to draw now. Large grids: pass 0 and draw in chunks with
        ``model.sample(chunk, random_state=rng)`` (one sample of a 1024×1024 grid is
        8 MiB).
    stencil : {4, 8}, default=4
    tying : {"untied", "tied"}, default="untied"
        ``"tied"``: a stationary truth, one diagonal value and one coupling per stencil
        offset (``u`` and ``c`` drawn once), fitted by a ``tying="tied"`` model.
    coupling : float in [0, 0.5], default=0.45
        Total strength of a pixel's couplings relative to the smallest diagonal (the
        ``s`` of the module docstring). Near 0.5 neighbouring pixels correlate strongly
        (correlations up to about 0.3) and Λ stays diagonally dominant.
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    model : GridGaussian
        The truth, fitted-like (``theta_``, ``precision_``, ``log_partition_``,
        ``sample``, ``score_samples``; zero mean).
    X : ndarray, shape (n_samples, H * W)
        Exact samples (empty when ``n_samples == 0``).

    Examples
    --------
    >>> from sparsegauss.datasets import make_grid_gaussian
    >>> truth, X = make_grid_gaussian((32, 32), 1000, random_state=0)
    >>> X.shape, truth.is_positive_definite_
    ((1000, 1024), True)
    """
    from .model import GridGaussian

    shape = check_grid_shape(shape)
    if stencil not in STENCIL_OFFSETS:
        raise ValueError(f"The 'stencil' parameter must be 4 or 8. Got {stencil!r} instead.")
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 0):
        raise ValueError(f"The 'n_samples' parameter must be an int >= 0. Got {n_samples!r} "
                         "instead.")
    if not (np.isfinite(coupling) and 0 <= coupling <= 0.5):
        raise ValueError("The 'coupling' parameter must lie in [0, 0.5] (diagonal "
                         f"dominance keeps Λ positive definite). Got {coupling!r} instead.")
    if tying not in ("untied", "tied"):
        raise ValueError(f"The 'tying' parameter must be 'untied' or 'tied'. Got {tying!r} "
                         "instead.")
    rng = np.random.default_rng(random_state)
    grid = GridParameterization(shape, stencil, tying)
    per_pixel = grid.n_pixels if tying == "untied" else 1
    fields = np.empty((grid.n_terms, grid.n_pixels))
    fields[0] = 1.0 + rng.uniform(0.0, 1.0, per_pixel)
    fields[1:] = -coupling * rng.uniform(0.0, 1.0, (grid.n_terms - 1, per_pixel)) / (
        grid.n_terms - 1)
    theta = grid.project(fields * grid.valid)
    model = GridGaussian(shape, stencil=stencil, tying=tying, assume_centered=True,
                         random_state=random_state)
    model._set_fitted(grid, theta, np.zeros(grid.n_pixels))
    model.n_iter_, model.residual_, model.converged_, model.history_ = 0, 0.0, True, []
    X = (model.sample(int(n_samples), random_state=rng) if n_samples
         else np.empty((0, grid.n_pixels)))
    return model, X
