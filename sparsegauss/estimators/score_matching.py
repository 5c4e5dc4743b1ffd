"""Score matching (Hyvärinen 2005) for the grid Gaussian.

The model score is ``ψ(x) = −Λx``, so ``J(θ) = E[Σ_i ∂_i ψ_i + ½ ψ_i²]`` is

    J(θ) = −tr Λ(θ) + ½ tr(Λ(θ) S Λ(θ)) = ½ θᵀ A θ − bᵀ θ,
    A_jl = tr(A_j S A_l),   b_j = tr(A_j),

quadratic in θ, minimized by the sparse linear system ``A θ = b``. ``A_jl`` is non-zero
only when the couplings ``j`` and ``l`` share a pixel ``a``: with ``𝒩(a)`` the stencil
around ``a`` (``a`` included), ``A = Σ_a Σ_{b,c ∈ 𝒩(a)} S_bc e_{j(a,b)} e_{l(c,a)}ᵀ``, so
the data enter through their second moments up to stencil distance 2, computed in one pass.

The minimizer need not be positive definite, and on MNIST with noise std 0.1 it is not:
``fit_score_matching`` then says so. :func:`fit_score_matching_barrier` minimizes
``J(θ) − μ log det Λ(θ)`` for a decreasing sequence of μ (Newton-CG, the log det and its
gradient from the sparse Cholesky factor), which keeps every iterate positive definite,
and returns the estimate at the smallest μ: the best positive-definite estimate the
criterion allows, up to a barrier weight the caller controls.
"""

import functools
import itertools

import numpy as np
import scipy.sparse as sp

from ..cholesky import solve_once
from ..exceptions import NotPositiveDefiniteError, SparseGaussError
from ..grid import STENCIL_OFFSETS
from ..normalization import GridNormalizer
from ..optimize import minimize
from ..stats import as_float_array, moment_sums
from ._driver import OptimizerOptions, run, whole_data
from .mle import dense_hessian_at, hessian_diagonal

__all__ = ["extended_moment_sums", "extended_offset_index", "fit_score_matching",
           "fit_score_matching_barrier", "fit_sm_gradient", "score_matching_system",
           "sm_loss_grad"]


def _half(offset):
    dr, dc = offset
    return offset if (dr > 0 or (dr == 0 and dc >= 0)) else (-dr, -dc)


def _extended_offsets(grid):
    """Half offsets of all pairs within stencil distance 2, and the stencil around a pixel."""
    neighbourhood = [(0, 0)] + [s * np.array(o) for o in STENCIL_OFFSETS[grid.stencil]
                                for s in (1, -1)]
    neighbourhood = [tuple(int(v) for v in o) for o in neighbourhood]
    halves = sorted({_half((b[0] - c[0], b[1] - c[1]))
                     for b, c in itertools.product(neighbourhood, repeat=2)})
    return halves, neighbourhood


def extended_offset_index(grid, offset):
    """Row of :func:`extended_moment_sums` that holds the half offset ``(dr, dc)``."""
    halves, _ = _extended_offsets(grid)
    return halves.index(_half(tuple(offset)))


def extended_moment_sums(X, grid, center=None):
    """``Σ_n (x_np − c_p)(x_n,p+δ − c_p+δ)`` for every half offset δ within stencil distance
    2, in the order of ``_extended_offsets`` (one pass; partial sums over chunks add up).

    Returns
    -------
    ndarray, shape (n_offsets, D)
    """
    halves, _ = _extended_offsets(grid)
    width = grid.shape[1]
    shifts = np.array([dr * width + dc for dr, dc in halves], dtype=np.int64)
    X = as_float_array(X)
    center = (np.zeros(grid.n_pixels) if center is None
              else np.ascontiguousarray(center, dtype=np.float64))
    return moment_sums(X, center, np.ones(len(X)), shifts)


def extended_moments(X, grid, sums=None):
    """Second moments ``S_bc`` for all pairs within stencil distance 2.

    Parameters
    ----------
    X : ndarray or None
        Centred data; unused when ``sums`` (from :func:`extended_moment_sums`) is given.

    Returns
    -------
    dict
        Half offset ``(dr, dc)`` → array of shape (D,) holding ``Σ_n x_np x_n,p+(dr,dc)``
        at the owner ``p`` (zero where the partner is off the grid); *sums*, not means.
    neighbourhood : list of tuple
    """
    halves, neighbourhood = _extended_offsets(grid)
    if sums is None:
        sums = extended_moment_sums(X, grid)
    height, width = grid.shape
    rows, cols = np.divmod(np.arange(grid.n_pixels), width)
    out = {}
    for k, (dr, dc) in enumerate(halves):
        inside = (rows + dr < height) & (cols + dc >= 0) & (cols + dc < width)
        out[(dr, dc)] = np.where(inside, sums[k], 0.0)
    return out, neighbourhood


def _param_index(grid):
    """``index[k, p]`` = parameter of stencil entry (k, p), -1 off the grid."""
    index = np.full(grid.n_terms * grid.n_pixels, -1, dtype=np.int64)
    index[grid._valid_flat] = grid._param_of_valid
    return index.reshape(grid.n_terms, grid.n_pixels)


def score_matching_system(X, grid, *, sums=None, n_samples=None, triangle="both"):
    """The sparse system ``A θ = b`` of score matching for centred data ``X``.

    ``J(θ) = ½ θᵀAθ − bᵀθ`` with ``A_jl = (1/n) Σ_a S_{b(a,j), c(a,l)}`` summed over the
    pixels ``a`` whose row of Λ holds both parameters ``j`` and ``l`` (at the offsets
    ``b`` and ``c`` from ``a``), and ``b_j = 1`` for the diagonal parameters.

    Out-of-core data: pass ``X=None``, the summed :func:`extended_moment_sums` of all the
    chunks as ``sums`` and their number of samples as ``n_samples``.

    ``triangle="lower"`` builds only ``A``'s lower triangle (``j ≥ l``): what a Cholesky
    solve reads, in half the memory (on a 2048×2048 grid ``A`` has 96 M entries).

    Returns
    -------
    A : scipy.sparse.csc_matrix, shape (n_params, n_params)
    b : ndarray, shape (n_params,)
    """
    moments, neighbourhood = extended_moments(X, grid, sums)
    n_samples = len(X) if n_samples is None else n_samples
    height, width = grid.shape
    index = _param_index(grid)
    term_of = {o: k for k, o in enumerate(grid.offsets)}
    rows_a, cols_a = np.divmod(np.arange(grid.n_pixels), width)

    def entry_param(offset):
        """Parameter of the entry (a, a + offset) for every pixel a, -1 if off the grid."""
        dr, dc = offset
        inside = ((rows_a + dr >= 0) & (rows_a + dr < height)
                  & (cols_a + dc >= 0) & (cols_a + dc < width))
        if offset in term_of:
            owner = np.arange(grid.n_pixels)
            term = term_of[offset]
        else:
            owner = np.arange(grid.n_pixels) + dr * width + dc
            term = term_of[(-dr, -dc)]
        param = np.full(grid.n_pixels, -1, dtype=np.int64)
        param[inside] = index[term, owner[inside]]
        return param

    if triangle not in ("both", "lower"):
        raise ValueError(f"triangle must be 'both' or 'lower', got {triangle!r}.")
    # 32-bit indices where they fit: the COO triplets are the build's peak memory.
    index_type = np.int32 if grid.n_params < 2 ** 31 else np.int64
    params = {o: entry_param(o).astype(index_type) for o in neighbourhood}
    rows, cols, values = [], [], []
    for off_b, off_c in itertools.product(neighbourhood, repeat=2):
        j, l = params[off_b], params[off_c]
        ok = (j >= 0) & (l >= 0)
        if triangle == "lower":
            ok &= j >= l
        a = np.flatnonzero(ok)
        diff = (off_c[0] - off_b[0], off_c[1] - off_b[1])
        if _half(diff) == diff:     # S_bc is stored at owner b
            owner = a + off_b[0] * width + off_b[1]
        else:                       # ... or at owner c
            owner = a + off_c[0] * width + off_c[1]
        rows.append(j[ok])
        cols.append(l[ok])
        values.append(moments[_half(diff)][owner] / n_samples)
    A = sp.coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(grid.n_params, grid.n_params)).tocsc()
    indicator = np.zeros((grid.n_terms, grid.n_pixels))
    indicator[0] = 1.0
    return A, grid.adjoint(indicator)


def fit_score_matching(X, grid, *, sums=None, n_samples=None):
    """Closed-form score-matching estimate: the solution of ``A θ = b``.

    ``sums`` and ``n_samples``: see :func:`score_matching_system`.

    Returns
    -------
    theta : ndarray, shape (n_params,)
    loss : float
        ``J(θ̂) = −½ bᵀθ̂``.
    """
    # A is symmetric by construction (S_bc = S_cb); the solve reads its lower triangle.
    lower, b = score_matching_system(X, grid, sums=sums, n_samples=n_samples,
                                     triangle="lower")
    try:
        theta = solve_once(lower, b)
    except NotPositiveDefiniteError as exc:
        raise SparseGaussError(
            "The score-matching system is singular: the data's second moments are not "
            "positive definite (too few samples, or constant pixels).") from exc
    return theta, float(-0.5 * b @ theta)


def sm_loss_grad(model, theta, X):
    """Score-matching loss and gradient on a batch, for any energy model.

    ``J = (1/n) Σ_n [Δf(x_n) + ½ ‖ψ(x_n)‖²]``, ``∇J = (1/n) Σ_n ∇_θ Δf(x_n) +
    (1/n) Σ_n Σ_i ψ_i(x_n) ∇_θ ψ_i(x_n)`` (see :mod:`sparsegauss.models.base`). For the
    grid Gaussian ``J = −Σ_p Λ_pp + (1/2n) Σ_n ‖Λx_n‖²``.
    """
    X = as_float_array(X)
    n_samples = len(X)
    score, score_vjp = model.score_and_vjp(theta, X)
    laplacian, laplacian_vjp = model.laplacian_vjp(theta, X)
    loss = (float(np.sum(laplacian)) + 0.5 * float(np.sum(score * score))) / n_samples
    grad = laplacian_vjp(np.full(n_samples, 1.0 / n_samples)) + score_vjp(score / n_samples)
    return loss, grad


def fit_sm_gradient(model, X, *, theta0, scale, optimizer=OptimizerOptions(), rng=None):
    """Score matching by minimizing :func:`sm_loss_grad` (any energy model).

    Returns
    -------
    scipy.optimize.OptimizeResult
    """
    rng = np.random.default_rng(rng)

    def draw(rows):
        return (whole_data(X) if rows is None else X[rows]), ()

    def objective(theta, batch, _drawn):
        return sm_loss_grad(model, theta, batch)

    result = run(objective, draw, len(X), theta0, scale, optimizer, rng, name="sm")
    return result


def fit_score_matching_barrier(X, grid, *, theta0, final_weight=1e-6, tol=1e-8,
                               max_iter=100, callback=None, sums=None, n_samples=None):
    """Best positive-definite score-matching estimate, by a log-barrier path.

    Minimizes ``J(θ) − μ log det Λ(θ)`` for ``μ = μ₀, μ₀/10, …, final_weight·μ₀`` with
    ``μ₀ = 1 / mean(S_pp)`` (the barrier's gradient ``−μ Σ`` is then comparable to
    ``J``'s at the start), each stage warm-started at the last and solved by Newton-CG
    whose line search never leaves the positive-definite cone.

    The stage's Hessian is ``A + 2μ H_ℓ`` with ``H_ℓ`` the likelihood's (Σ ∘ Σ on pairs
    of parameters). Its diagonal preconditions CG, and where pixels are strongly
    correlated CG stalls on the part of ``H_ℓ`` the diagonal misses; as in
    :func:`~sparsegauss.estimators.mle.fit_mle`, the remaining steps of such a stage are
    then exact Newton steps with the dense Hessian (models of up to
    :data:`~sparsegauss.estimators.mle.DENSE_HESSIAN_MAX_PARAMS` parameters). Measured
    (scratch ``/tmp/exp24/smstage.py``, ``smphotos.py``, ``smmnist.py``, 2026-12-03):
    300 smoothed 10×12 images, 8 neighbours, 24 s → 1.1–1.3 s; 5,000 patches of
    photographs, 28×28, 8 neighbours, 198 s → 44 s, with every stage now converged (the
    first two had stopped at 1,000 steps); 4 neighbours unchanged (0.5 s); MNIST's
    barrier, where a stage's last step or two go direct, 1.0–1.5 → 1.8–2.2 s. Waiting
    for two or three stalls in a row before going direct was slower on the smoothed
    images (4 s, 92 s).

    Parameters
    ----------
    X : ndarray, shape (n, D)
        Centred data.
    theta0 : ndarray
        A positive-definite start (e.g. the independent model).
    final_weight : float, default=1e-6
        Last barrier weight relative to μ₀.
    sums, n_samples
        Out-of-core data (``X=None``): see :func:`score_matching_system`. The path sees
        the data only through that system and the pixel variances, so one pass over
        the chunks serves every stage.

    Returns
    -------
    scipy.optimize.OptimizeResult
        Of the last stage, with ``barrier_weight`` and the concatenated ``history``.
    """
    A, b = score_matching_system(X, grid, sums=sums, n_samples=n_samples)
    A = ((A + A.T) * 0.5).tocsr()
    normalizer = GridNormalizer(grid)
    variances = (np.einsum("ij,ij->j", X, X) / len(X) if sums is None
                 else sums[0] / n_samples)
    mu0 = 1.0 / np.mean(variances)
    weights = mu0 * 10.0 ** -np.arange(0, int(np.ceil(-np.log10(final_weight))) + 1)
    theta, history, result = np.asarray(theta0, float), [], None
    a_diagonal = A.diagonal()
    evaluated = {}

    @functools.lru_cache(maxsize=1)
    def dense_a():
        return A.toarray()

    def curvature(t, mu):
        """The diagonal of the stage's Hessian at t: A's and the barrier's."""
        if evaluated.get("theta") is not t:
            evaluated.update(theta=t, covariance=normalizer.covariance_fields(
                normalizer.factorize(t)))
        return a_diagonal + 2.0 * mu * hessian_diagonal(evaluated["covariance"], grid)

    for mu in weights:
        def loss_grad(t, mu=mu):
            log_z, grad_log_z, covariance = normalizer.value_and_grad(t)
            evaluated.update(theta=t, covariance=covariance)
            logdet = grid.n_pixels * np.log(2 * np.pi) - 2.0 * log_z
            At = A @ t
            # −μ log det Λ has gradient −μ ∂ log det/∂θ = 2μ ∂ log Z/∂θ.
            return (0.5 * t @ At - b @ t - mu * logdet, At - b + 2.0 * mu * grad_log_z)

        def precondition(t, mu=mu):
            inverse = 1.0 / curvature(t, mu)
            return lambda v: inverse * v

        def decrement(t, loss, grad, mu=mu):
            # Scale-free Newton decrement with the Hessian's diagonal, √(Σ g²/H_jj) / √|J|.
            # The barrier's curvature belongs in it: near the cone's boundary it dominates,
            # and a gradient measured by A's diagonal alone could stay above tol at a
            # point where the Newton step is already below rounding (300 smoothed 10×12
            # images: 1,000 iterations at 1.3e-6 or 9 to 1e-6, by a rounding of the mean).
            return float(np.sqrt(np.sum(grad ** 2 / curvature(t, mu))
                                 / max(abs(loss), 1e-300)))

        def hessian(t, mu=mu):
            # −μ log det Λ has Hessian 2μ × the likelihood's (dense_hessian).
            barrier = dense_hessian_at(t, grid)
            if barrier is None:
                return None
            barrier *= 2.0 * mu
            barrier += dense_a()
            return barrier

        result = minimize(loss_grad, theta, method="newton-cg", tol=tol, maxiter=max_iter,
                          callback=callback, precondition=precondition, convergence=decrement,
                          hessian=hessian)
        theta = result.x
        history.extend(dict(row, barrier_weight=float(mu)) for row in result.history)
    result.history = history
    result.barrier_weight = float(weights[-1])
    return result
