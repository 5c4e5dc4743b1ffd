"""Noise distributions for noise-contrastive estimation.

NCE learns by telling data from noise. Its gradient comes from the samples the classifier
gets wrong, so noise far from the data (the classifier wins at once) gives vanishing
gradients and a noisy, slowly converging estimate; noise close to the data keeps the
problem hard and the estimate efficient (Gutmann & Hyvärinen 2012, §2.4). All noises here
are zero-mean Gaussians fitted to the (centred) data, from far to near:

* ``"isotropic"``  N(0, s² I) with s² the mean pixel variance;
* ``"diagonal"``   N(0, diag(S_pp));
* ``"empirical"``  N(0, S), the data's full covariance (dense; D ≤ 4096);
* ``"grid"``       a tied (stationary) grid Gaussian fitted by exact MLE: captures the
  neighbour correlations on average, scales to any grid (sparse Cholesky);
* ``"grid-untied"`` the untied 4-neighbour grid Gaussian fitted by exact MLE. It is the
  4-neighbour model's exact MLE, so a 4-neighbour NCE started at it starts at the answer;
  what ``"auto"`` means where a fixed noise is needed (:class:`~sparsegauss.
  DeepEnergyModel`, whose answer it is not);
* ``"adaptive"`` (GridGaussian's NCE and ranking NCE; their ``"auto"``, the default) no
  fixed distribution but a schedule fitted from nothing but the data's variances: from
  the diagonal noise, the noise is a frozen copy of the current estimate at every step of
  a first phase (2,500 of NCE's and ranking NCE's 3,500 default steps),
  then fixed at the estimate reached (see
  :mod:`sparsegauss.estimators.adaptive`).

Measured on MNIST (noise std 0.1, 4-neighbour model, 60,000 images):

* isotropic, diagonal and tied-grid noise: the classifier separates data from noise
  completely (the loss falls to 0) and NCE has no finite estimate. The model's log-ratio is
  linear in the pattern products ``x_p x_q``; a noise whose second moments on the pattern
  differ from the data's hands the classifier a separating direction in 2,296 dimensions.
* empirical noise: matches every second moment, so no separation, but a grid model
  cannot follow its long-range correlations: log-ratios of tens of nats, a saturated
  loss, and no convergence in 1,000 L-BFGS steps.
* untied grid noise: lies in the model family and matches the data's second moments on
  the pattern (Dempster's condition), so the classifier starts balanced (loss 2 log 2)
  and stays so: a positive-definite estimate with held-out log-likelihood 362.36 nats
  against the MLE's 362.38, learned log Z within 0.04 nats of the exact value; but that
  noise is the 4-neighbour MLE itself, and with 8 neighbours it leaves NCE 12.4 nats
  (KL) from the MLE, separated on the diagonal couplings.
* adaptive noise: KL to the MLE 0.095 (4 neighbours) and 2.6 (8), from nothing but the
  variances; but on photo patches (much stronger correlations) KL 409 (4) and not
  positive definite (8) (see :mod:`sparsegauss.estimators.adaptive`).

Any object with ``sample(n, random_state)`` and ``score_samples(X)`` can be passed
instead.
"""

import numpy as np

from .distribution import GridGaussianDistribution
from .estimators.mle import fit_mle
from .grid import GridParameterization
from .normalization import GridNormalizer
from .stats import pattern_moments

__all__ = ["NOISES", "DiagonalNoise", "EmpiricalNoise", "GridNoise", "IsotropicNoise",
           "fit_grid_noise", "make_noise"]

NOISES = ("auto", "isotropic", "diagonal", "empirical", "grid", "grid-untied", "adaptive")
_LOG_2PI = float(np.log(2.0 * np.pi))
#: Largest D for which the dense "empirical" noise is allowed (a 4096² matrix is 128 MiB).
EMPIRICAL_MAX_PIXELS = 4096


class DiagonalNoise:
    """Zero-mean Gaussian with independent pixels, ``N(0, diag(variances))``."""

    def __init__(self, variances):
        self.variances = np.asarray(variances, dtype=np.float64)

    def sample(self, n_samples, random_state=None):
        rng = np.random.default_rng(random_state)
        return rng.standard_normal((n_samples, self.variances.size)) * np.sqrt(self.variances)

    def score_samples(self, X):
        # One pass, no (n_samples, D) temporary (but for a RowSelection's rows, centred
        # once here rather than once for each operand of einsum).
        X = np.asarray(X)
        return -0.5 * (np.einsum("ij,ij,j->i", X, X, 1.0 / self.variances)
                       + np.sum(np.log(self.variances)) + self.variances.size * _LOG_2PI)


class IsotropicNoise(DiagonalNoise):
    """``N(0, s² I)``."""

    def __init__(self, variance, n_pixels):
        super().__init__(np.full(n_pixels, float(variance)))


class EmpiricalNoise:
    """Zero-mean Gaussian with a dense covariance (the data's own)."""

    def __init__(self, covariance):
        covariance = np.asarray(covariance, dtype=np.float64)
        self.chol = np.linalg.cholesky(covariance)
        self.logdet = 2.0 * np.sum(np.log(np.diag(self.chol)))

    def sample(self, n_samples, random_state=None):
        rng = np.random.default_rng(random_state)
        return rng.standard_normal((n_samples, self.chol.shape[0])) @ self.chol.T

    def score_samples(self, X):
        from scipy.linalg import solve_triangular
        white = solve_triangular(self.chol, np.asarray(X, dtype=np.float64).T, lower=True)
        return -0.5 * (np.sum(white ** 2, axis=0) + self.logdet + self.chol.shape[0] * _LOG_2PI)


class GridNoise:
    """A grid Gaussian used as noise.

    Parameters
    ----------
    distribution : GridGaussianDistribution
        The frozen distribution (``GridGaussian(...).fit(X).distribution_``, or one
        built from any θ).
    """

    def __init__(self, distribution):
        self.distribution = getattr(distribution, "distribution_", distribution)

    def sample(self, n_samples, random_state=None, out=None):
        return self.distribution.sample(n_samples, random_state=random_state, out=out)

    def sample_and_score(self, n_samples, random_state=None, out=None):
        return self.distribution.sample_and_score(n_samples, random_state=random_state,
                                                  out=out)

    def score_samples(self, X):
        return self.distribution.score_samples(X)


def fit_grid_noise(X, shape, *, stencil=4, tying="tied"):
    """The exact-MLE grid Gaussian of centred data ``X``, frozen, as a noise."""
    grid = GridParameterization(shape, stencil, tying)
    normalizer = GridNormalizer(grid)
    result = fit_mle(pattern_moments(X, grid) / len(X), grid, normalizer=normalizer)
    # The fit's selected-inverse buffer (a factor's size) is not the noise's: sampling
    # and scoring need only the factor. Kept, it sat beside NCE's whole fit (2048×2048
    # tied NCE: 1.7 GB of its 21.8 GB peak).
    normalizer.analysis.release_inverse()
    return GridNoise(GridGaussianDistribution(grid, result.x, normalizer=normalizer))


def make_noise(noise, X, shape, *, stencil=4):
    """Build a noise distribution fitted to centred data ``X``.

    Parameters
    ----------
    noise : {"auto", "isotropic", "diagonal", "empirical", "grid", "grid-untied"} or object
        An object with ``sample(n, random_state)`` and ``score_samples(X)`` is returned
        as it is.
    X : ndarray or RowSelection, shape (n_samples, D)
        Centred data.
    shape : tuple of int
        Grid shape, for ``"grid"``.
    stencil : {4, 8}, default=4
        Stencil of the ``"grid"`` noise.
    """
    if not isinstance(noise, str):
        if not (callable(getattr(noise, "sample", None))
                and callable(getattr(noise, "score_samples", None))):
            raise TypeError("The 'noise' parameter must be one of "
                            f"{NOISES} or an object with sample(n, random_state) and "
                            f"score_samples(X). Got {noise!r} instead.")
        return noise
    if noise not in NOISES:
        raise ValueError(f"The 'noise' parameter must be one of {NOISES} or a "
                         f"distribution object. Got {noise!r} instead.")
    if noise == "adaptive":
        raise ValueError("noise='adaptive' is not a fixed distribution but a schedule of "
                         "the estimator (a frozen copy of the current estimate, see "
                         "sparsegauss.estimators.adaptive): GridGaussian's NCE and ranking "
                         "NCE run it; here pass a fixed noise such as 'diagonal' or "
                         "'grid-untied'.")
    n_pixels = X.shape[1]
    if noise == "auto":
        # A fixed noise for a model that is not the grid Gaussian itself (GridGaussian's
        # NCE maps "auto" to the adaptive schedule before it gets here).
        noise = "grid-untied"
    if noise in ("grid", "grid-untied"):
        return fit_grid_noise(X, shape, stencil=stencil,
                              tying="tied" if noise == "grid" else "untied")
    X = np.asarray(X)       # centred data not yet centred (a RowSelection): centred once
    variances = np.einsum("ij,ij->j", X, X) / len(X)
    if noise == "isotropic":
        return IsotropicNoise(variances.mean(), n_pixels)
    if noise == "diagonal":
        return DiagonalNoise(variances)
    if noise == "empirical":
        if n_pixels > EMPIRICAL_MAX_PIXELS:
            raise ValueError(f"The 'empirical' noise needs a dense {n_pixels}x{n_pixels} "
                             f"covariance; it is limited to D <= {EMPIRICAL_MAX_PIXELS}. "
                             "Use noise='grid' for large images.")
        covariance = X.T @ X / len(X)
        # A tiny ridge keeps the Cholesky factor defined when n_samples < D.
        covariance[np.diag_indices(n_pixels)] += 1e-10 * np.mean(variances)
        return EmpiricalNoise(covariance)
