"""``DeepEnergyModel``: the two-layer deep energy model as a scikit-learn estimator.

The model (:class:`~sparsegauss.models.DeepEnergy`) is fitted in a whitened space: the
estimator first fits a grid Gaussian to the patches and whitens them with it
(:class:`~sparsegauss.whitening.GridWhitening`, ``z = Λ^{1/2}(x − μ)`` by default, which
keeps the pixel layout), so raw [0, 1] patches need no preparation. In that space the
fitted Gaussian is ``N(0, I)``, which is NCE's noise: the DEM then learns what the
Gaussian misses. Densities are reported in the pixel space of the input,

    log p(x) = f_θ(z) − log Z + log |det ∂z/∂x|,   log |det ∂z/∂x| = ½ log det Λ,

so scores of natural patches, Gaussian samples and digits are comparable numbers.
"""

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .estimators._driver import OptimizerOptions
from .estimators.cd import CDOptions, fit_cd
from .estimators.nce import NCEOptions, fit_nce
from .estimators.score_matching import fit_sm_gradient
from .models import DeepEnergy
from .noise import DiagonalNoise
from .whitening import GridWhitening

__all__ = ["DeepEnergyModel"]

METHODS = ("nce", "sm", "cd")


def _image_shape(X):
    """(H, W) of images (n, H, W); for flat rows (n, D) a square grid when D is a square
    (``extract_patches`` returns square patches flattened), else a 1 × D chain."""
    if X.ndim == 3:
        return tuple(int(s) for s in X.shape[1:])
    side = int(round(np.sqrt(X.shape[1])))
    return (side, side) if side * side == X.shape[1] else (1, X.shape[1])


class DeepEnergyModel(DensityMixin, BaseEstimator):
    """``log p̃(z) = −‖z‖²/(2σ²) + bᵀz + Σ_k S(w_kᵀ s(Vz) + c_k)`` on whitened patches.

    Parameters
    ----------
    n_hidden, n_units : int, default=64
        H (rows of V) and K (rows of W).
    sigma : float, default=1.0
        Scale of the Gaussian term (in whitened units: 1 matches the whitened data).
    method : {"nce", "sm", "cd"}, default="nce"
        NCE against the fitted Gaussian (``N(0, I)`` after whitening) with learned log Z;
        score matching; contrastive divergence with MALA negatives started at the data.
    whitening : {"symmetric", "cholesky", None}, default="symmetric"
        How patches are whitened by their grid Gaussian (None: used as given, and NCE's
        noise is then ``N(0, σ² I)``).
    stencil : {4, 8}, default=4
        Stencil of the whitening Gaussian.
    max_iter : int, default=2000
        Adam steps (batch ``batch_size``, cosine-annealed ``learning_rate``).
    learning_rate : float, default=0.01
    batch_size : int, default=256
    cd_steps : int, default=5
        MALA steps per CD step.
    random_state : None, int or numpy.random.Generator

    Attributes
    ----------
    energy_ : DeepEnergy
    theta_ : ndarray
    whitening_ : GridWhitening or None
    image_shape_ : (int, int)
        Grid of the patches: from (n, H, W) input; for flat (n, D) input square when D
        is a perfect square, else 1 × D.
    log_partition_estimate_ : float
        NCE's learned log Z of the whitened-space model (``method="nce"`` only).
    history_ : list of dict
    """

    def __init__(self, n_hidden=64, n_units=64, sigma=1.0, method="nce", *,
                 whitening="symmetric", stencil=4, max_iter=2000, learning_rate=1e-2,
                 batch_size=256, cd_steps=5, random_state=None):
        self.n_hidden = n_hidden
        self.n_units = n_units
        self.sigma = sigma
        self.method = method
        self.whitening = whitening
        self.stencil = stencil
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.cd_steps = cd_steps
        self.random_state = random_state

    def _whiten(self, X):
        return X if self.whitening_ is None else self.whitening_.transform(X)

    def fit(self, X, y=None):
        if self.method not in METHODS:
            raise ValueError(f"The 'method' parameter of DeepEnergyModel must be one of "
                             f"{METHODS}. Got {self.method!r} instead.")
        if self.whitening not in ("symmetric", "cholesky", None):
            raise ValueError("The 'whitening' parameter of DeepEnergyModel must be "
                             f"'symmetric', 'cholesky' or None. Got {self.whitening!r} instead.")
        X = np.asarray(X, dtype=np.float64)
        self.image_shape_ = _image_shape(X)
        X = validate_data(self, X.reshape(len(X), -1) if X.ndim == 3 else X, reset=True)
        rng = np.random.default_rng(self.random_state)
        self.whitening_ = (None if self.whitening is None else
                           GridWhitening(self.image_shape_, stencil=self.stencil,
                                         method=self.whitening).fit(X))
        Z = self._whiten(X)
        self.energy_ = DeepEnergy(X.shape[1], self.n_hidden, self.n_units, self.sigma)
        theta0 = self.energy_.initial_params(rng)
        optimizer = OptimizerOptions(optimizer="adam", tol=0.0, max_iter=self.max_iter,
                                     learning_rate=self.learning_rate,
                                     batch_size=self.batch_size)
        scale = np.ones(self.energy_.n_params)
        if self.method == "nce":
            noise = DiagonalNoise(np.full(X.shape[1], 1.0 if self.whitening_ is not None
                                          else self.sigma ** 2))
            result = fit_nce(self.energy_, Z, noise, theta0=theta0, scale=scale,
                             options=NCEOptions(), optimizer=optimizer, rng=rng)
            self.log_partition_estimate_ = result.log_partition_estimate
        elif self.method == "sm":
            result = fit_sm_gradient(self.energy_, Z, theta0=theta0, scale=scale,
                                     optimizer=optimizer, rng=rng)
        else:
            result = fit_cd(self.energy_, Z, theta0=theta0, scale=scale,
                            options=CDOptions(cd_steps=self.cd_steps),
                            optimizer=optimizer, rng=rng)
        self.theta_ = result.x
        self.history_ = result.history
        self.n_iter_ = int(result.nit)
        return self

    def _jacobian(self):
        return 0.0 if self.whitening_ is None else self.whitening_.log_det_jacobian_

    def unnormalized_score_samples(self, X):
        """``log p̃(x) = f_θ(z) + log |det ∂z/∂x|`` (no log Z) in pixel space."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float64)
        Z = self._whiten(X.reshape(len(X), -1))
        return self.energy_.log_density(self.theta_, Z) + self._jacobian()

    def score_samples(self, X):
        """``log p(x)`` in pixel space, with NCE's learned log Z.

        Raises
        ------
        AttributeError
            The model was not fitted by NCE, so it has no log Z estimate.
        """
        if not hasattr(self, "log_partition_estimate_"):
            raise AttributeError("score_samples needs a log Z: fit with method='nce' (which "
                                 "learns it), or use unnormalized_score_samples.")
        return self.unnormalized_score_samples(X) - self.log_partition_estimate_

    def filters(self):
        """Rows of V as images (in whitened coordinates), shape (H, h, w)."""
        check_is_fitted(self)
        V = self.energy_.unpack(self.theta_)[0]
        return V.reshape((len(V),) + self.image_shape_)
