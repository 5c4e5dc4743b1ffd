"""``GridGaussian``: the estimator users fit, score, sample and save."""

import inspect
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .estimators.mle import fit_mle
from .exceptions import ConvergenceWarning, NotPositiveDefiniteError
from .grid import STENCIL_OFFSETS, TYINGS, GridParameterization, check_grid_shape
from .normalization import LOG_2PI, GridNormalizer
from .stats import pattern_moments, quadratic_forms

__all__ = ["GridGaussian"]

METHODS = ("mle",)
_FORMAT = "sparsegauss.GridGaussian"
_FORMAT_VERSION = 1


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit``."""


class GridGaussian:
    r"""Gaussian with a sparse, grid-structured precision matrix.

    ``p(x) = exp(−½ (x − μ)ᵀ Λ (x − μ)) / Z`` over images of ``H × W`` pixels flattened
    row-major (pixel ``(r, c)`` is index ``r * W + c``), where ``Λ`` couples each pixel
    only to its 4 or 8 grid neighbours and ``Z = (2π)^{D/2} det(Λ)^{-1/2}``.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)``, ``H, W >= 1``.
    stencil : {4, 8}, default=4
        Neighbourhood of each pixel.
    tying : {"untied", "tied"}, default="untied"
        ``"untied"``: one parameter per pixel and per edge; ``"tied"``: stationary, one
        per stencil term.
    method : {"mle"}, default="mle"
        Estimator. ``"mle"`` is exact maximum likelihood.
    assume_centered : bool, default=False
        If True, ``μ = 0`` and the data are not centred; otherwise ``μ`` is the mean.
    tol : float, default=1e-8
        Stop when the KKT residual ``max |Σ − S| / √(S_pp S_qq)`` over the pattern
        (correlation units) is below ``tol``.
    max_iter : int, default=100
        Most Newton iterations.
    random_state : None, int or numpy.random.Generator, default=None
        Default source of randomness for :meth:`sample`.
    verbose : bool, default=False
        Print one line per iteration.

    Attributes
    ----------
    theta_ : ndarray, shape (n_params,)
        Fitted parameters (see :class:`~sparsegauss.grid.GridParameterization`).
    precision_ : scipy.sparse.csc_matrix, shape (D, D)
        Λ(θ̂).
    location_ : ndarray, shape (D,)
        μ.
    log_partition_ : float
        Exact ``log Z = (D/2) log 2π − ½ log det Λ``.
    n_iter_ : int
    history_ : list of dict
        Per iteration: ``iteration, loss, time, residual, nfev``.
    kkt_residual_ : float
    converged_ : bool
    is_positive_definite_ : bool

    Notes
    -----
    The MLE maximizes ``ℓ(θ) = ½ log det Λ − ½ tr(ΛS) − (D/2) log 2π`` whose gradient is
    ``½ (Σ − S)`` on the pattern; ``Σ`` on the pattern comes from the selected inverse of
    the sparse Cholesky factor and ``S`` from one pass over the data, so the cost of the
    fit after that pass does not depend on the number of samples.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegauss import GridGaussian
    >>> X = np.random.default_rng(0).standard_normal((500, 6 * 5))
    >>> model = GridGaussian((6, 5), stencil=4).fit(X)
    >>> model.converged_
    True
    >>> samples = model.sample(3, random_state=0)
    >>> samples.shape
    (3, 30)
    """

    def __init__(self, shape, *, stencil=4, tying="untied", method="mle",
                 assume_centered=False, tol=1e-8, max_iter=100, random_state=None,
                 verbose=False):
        self.shape = shape
        self.stencil = stencil
        self.tying = tying
        self.method = method
        self.assume_centered = assume_centered
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.verbose = verbose

    # -- scikit-learn parameter protocol --------------------------------------------
    @classmethod
    def _param_names(cls):
        signature = inspect.signature(cls.__init__)
        return sorted(name for name in signature.parameters if name != "self")

    def get_params(self, deep=True):
        """Parameters of this estimator, as passed to ``__init__``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set parameters; returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for GridGaussian. "
                                 f"Valid parameters are: {valid}.")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {name: p.default for name, p in
                    inspect.signature(type(self).__init__).parameters.items()}
        shown = [repr(self.shape)] + [f"{k}={v!r}" for k, v in self.get_params().items()
                                      if k != "shape" and v is not defaults[k]
                                      and v != defaults[k]]
        return f"GridGaussian({', '.join(shown)})"

    # -- validation --------------------------------------------------------------------
    def _validate_params(self):
        shape = check_grid_shape(self.shape)
        if self.stencil not in STENCIL_OFFSETS:
            raise ValueError("The 'stencil' parameter of GridGaussian must be 4 or 8. "
                             f"Got {self.stencil!r} instead.")
        if self.tying not in TYINGS:
            raise ValueError(f"The 'tying' parameter of GridGaussian must be one of {TYINGS}. "
                             f"Got {self.tying!r} instead.")
        if self.method not in METHODS:
            raise ValueError(f"The 'method' parameter of GridGaussian must be one of "
                             f"{METHODS}. Got {self.method!r} instead.")
        if not (isinstance(self.tol, (int, float)) and np.isfinite(self.tol) and self.tol > 0):
            raise ValueError("The 'tol' parameter of GridGaussian must be a float > 0. "
                             f"Got {self.tol!r} instead.")
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter >= 1):
            raise ValueError("The 'max_iter' parameter of GridGaussian must be an int >= 1. "
                             f"Got {self.max_iter!r} instead.")
        return shape

    def _validate_data(self, X, n_pixels, min_samples):
        X = np.asarray(X)
        if X.dtype == object or not (np.issubdtype(X.dtype, np.floating)):
            if np.issubdtype(X.dtype, np.integer) or X.dtype == bool:
                raise TypeError(
                    f"X has integer dtype {X.dtype}. Convert it to float first, scaled as "
                    "you intend (for 8-bit images, X / 255.0; sparsegauss.datasets."
                    "preprocess does this and adds the pixel noise).")
            raise TypeError(f"X must be an array of floats. Got dtype {X.dtype}.")
        height, width = check_grid_shape(self.shape)
        if X.ndim == 3 and X.shape[1:] == (height, width):
            X = X.reshape(X.shape[0], n_pixels)
        if X.ndim != 2 or X.shape[1] != n_pixels:
            raise ValueError(
                f"X must have shape (n_samples, {n_pixels}) or (n_samples, {height}, "
                f"{width}) for a {height}x{width} grid. Got shape {X.shape} instead.")
        if X.shape[0] < min_samples:
            raise ValueError(f"X has {X.shape[0]} sample(s); at least {min_samples} are "
                             "needed.")
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if not np.all(np.isfinite(X)):
            bad = np.argwhere(~np.isfinite(X))[0]
            raise ValueError(f"X contains NaN or inf (first at sample {bad[0]}, pixel "
                             f"{bad[1]}). Remove or impute those values first.")
        return np.ascontiguousarray(X)

    def _check_fitted(self):
        if not hasattr(self, "theta_"):
            raise NotFittedError("This GridGaussian is not fitted yet. Call 'fit' with "
                                 "data first, or load a saved model.")

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit the model to images ``X``.

        Parameters
        ----------
        X : array-like, shape (n_samples, H * W) or (n_samples, H, W)
            Float images (float32 or float64; at least 2 samples).
        y : ignored

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad shape, NaN/inf, fewer than 2 samples, or pixels with zero variance.
        TypeError
            Integer or non-numeric data.
        """
        shape = self._validate_params()
        grid = GridParameterization(shape, self.stencil, self.tying)
        X = self._validate_data(X, grid.n_pixels, min_samples=2)
        location = (np.zeros(grid.n_pixels) if self.assume_centered
                    else X.mean(axis=0, dtype=np.float64))
        moments = pattern_moments(X, grid, center=location) / X.shape[0]
        self._check_variances(moments[0], shape)

        normalizer = GridNormalizer(grid)
        callback = self._progress if self.verbose else None
        result = fit_mle(moments, grid, tol=self.tol, max_iter=self.max_iter,
                         callback=callback, normalizer=normalizer)
        if not result.success:
            warnings.warn(f"GridGaussian did not converge: {result.message}. Increase "
                          "max_iter or tol.", ConvergenceWarning, stacklevel=2)
        self._set_fitted(grid, result.x, location, normalizer)
        self.n_iter_ = int(result.nit)
        self.history_ = result.history
        self.kkt_residual_ = float(result.residual)
        self.converged_ = bool(result.success)
        return self

    @staticmethod
    def _check_variances(variances, shape):
        scale = np.max(variances)
        # Below this relative level a pixel is numerically constant: Λ_pp → ∞.
        flat = np.flatnonzero(variances <= 1e-12 * scale) if scale > 0 else np.arange(variances.size)
        if flat.size:
            where = ", ".join(str(tuple(int(v) for v in divmod(p, shape[1]))) for p in flat[:5])
            raise ValueError(
                f"X has {flat.size} pixel(s) with zero variance (first at (row, col) {where}); "
                "their precision would be infinite. Add noise (e.g. sparsegauss.datasets."
                "preprocess(noise_std=0.1)) or crop those pixels.")

    def _progress(self, state):
        print(f"[GridGaussian] iteration {state.nit:4d}  loss {state.fun:.10g}  "
              f"KKT residual {state.residual:.3e}", flush=True)

    def _set_fitted(self, grid, theta, location, normalizer=None):
        self._grid = grid
        self._normalizer = normalizer if normalizer is not None else GridNormalizer(grid)
        self.theta_ = np.asarray(theta, dtype=np.float64)
        self.location_ = np.asarray(location, dtype=np.float64)
        self.precision_ = grid.precision(self.theta_)
        try:
            self._factor_logdet = self._normalizer.factorize(self.theta_).logdet()
            self.is_positive_definite_ = True
        except NotPositiveDefiniteError:
            self._factor_logdet = None
            self.is_positive_definite_ = False

    # -- using the fitted model --------------------------------------------------------------
    @property
    def log_partition_(self):
        """Exact ``log Z = (D/2) log 2π − ½ log det Λ``."""
        self._check_fitted()
        self._require_pd("log_partition_")
        return 0.5 * self._grid.n_pixels * LOG_2PI - 0.5 * self._factor_logdet

    def _require_pd(self, what):
        if not self.is_positive_definite_:
            raise NotPositiveDefiniteError(
                f"{what} is undefined: the estimated precision matrix is not positive "
                "definite, so the model is not a normalizable Gaussian.")

    def score_samples(self, X):
        """Exact log-density of each sample.

        ``log p(x) = −½ (x − μ)ᵀ Λ (x − μ) − log Z``.

        Parameters
        ----------
        X : array-like, shape (n_samples, H * W) or (n_samples, H, W)

        Returns
        -------
        ndarray, shape (n_samples,)
        """
        self._check_fitted()
        self._require_pd("score_samples")
        X = self._validate_data(X, self._grid.n_pixels, min_samples=1)
        quad = quadratic_forms(X, self._grid, self._grid.fields(self.theta_),
                               center=self.location_)
        return -0.5 * quad - self.log_partition_

    def score(self, X, y=None):
        """Mean log-likelihood per sample (nats)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """Exact samples ``x = μ + Pᵀ L⁻ᵀ ε`` with ``ε ~ N(0, I)``.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : None, int or numpy.random.Generator
            Defaults to the estimator's ``random_state``.

        Returns
        -------
        ndarray, shape (n_samples, H * W)
        """
        self._check_fitted()
        self._require_pd("sample")
        if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
            raise ValueError("The 'n_samples' parameter of GridGaussian.sample must be an "
                             f"int >= 1. Got {n_samples!r} instead.")
        rng = np.random.default_rng(self.random_state if random_state is None else random_state)
        factor = self._normalizer.factorize(self.theta_)
        return self.location_ + factor.sample(int(n_samples), rng)

    def couplings(self):
        """The fitted Λ in the image-shaped stencil layout.

        Returns
        -------
        dict
            Term name (``"diagonal"``, ``"horizontal"``, ...) → array of shape ``(H, W)``
            holding ``Λ_{p, p+δ}`` at the pixel ``p`` that owns the pair.
        """
        self._check_fitted()
        fields = self._grid.fields(self.theta_)
        return {name: fields[k].reshape(self._grid.shape)
                for k, name in enumerate(self._grid.term_names)}

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path):
        """Save the fitted model to ``path`` (``.npz``, no pickle), atomically.

        The file is written next to ``path`` and renamed over it only when complete, so
        an existing file is never left half-written.
        """
        self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"Model files use the .npz extension. Got {str(path)!r}.")
        history_keys = sorted(self.history_[0]) if self.history_ else []
        arrays = dict(
            format=np.array(_FORMAT), format_version=np.array(_FORMAT_VERSION),
            shape=np.array(self._grid.shape), stencil=np.array(self.stencil),
            tying=np.array(self.tying), method=np.array(self.method),
            assume_centered=np.array(self.assume_centered), tol=np.array(float(self.tol)),
            max_iter=np.array(int(self.max_iter)),
            theta=self.theta_, location=self.location_,
            n_iter=np.array(self.n_iter_), kkt_residual=np.array(self.kkt_residual_),
            converged=np.array(self.converged_),
            history_keys=np.array(history_keys),
            history=np.array([[row[k] for k in history_keys] for row in self.history_],
                             dtype=np.float64).reshape(len(self.history_), len(history_keys)),
        )
        directory = path.parent if str(path.parent) else Path(".")
        handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save`.

        Raises
        ------
        ValueError
            The file is not a sparsegauss model, or is damaged.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                content = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"Could not read a GridGaussian model from {path}: {exc}. "
                             "The file is damaged or not a .npz file.") from exc
        if content.get("format", np.array("")).item() != _FORMAT:
            raise ValueError(f"{path} is not a sparsegauss GridGaussian model file.")
        if int(content["format_version"]) > _FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer sparsegauss (format version "
                             f"{int(content['format_version'])}); upgrade sparsegauss.")
        model = cls(tuple(int(s) for s in content["shape"]), stencil=int(content["stencil"]),
                    tying=str(content["tying"]), method=str(content["method"]),
                    assume_centered=bool(content["assume_centered"]),
                    tol=float(content["tol"]), max_iter=int(content["max_iter"]))
        grid = GridParameterization(model.shape, model.stencil, model.tying)
        theta = content["theta"]
        if theta.shape != (grid.n_params,) or content["location"].shape != (grid.n_pixels,):
            raise ValueError(f"{path} is damaged: its parameters do not fit a "
                             f"{model.shape} grid with stencil {model.stencil}.")
        model._set_fitted(grid, theta, content["location"])
        model.n_iter_ = int(content["n_iter"])
        model.kkt_residual_ = float(content["kkt_residual"])
        model.converged_ = bool(content["converged"])
        keys = [str(k) for k in content["history_keys"]]
        model.history_ = [{k: (int(v) if k in ("iteration", "nfev") else float(v))
                           for k, v in zip(keys, row)} for row in content["history"]]
        return model
