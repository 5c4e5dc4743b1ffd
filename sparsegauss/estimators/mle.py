"""Exact maximum likelihood for a grid Gaussian.

With ``S`` the empirical covariance (data already centred), the mean log-likelihood is

    ℓ(θ) = ½ log det Λ(θ) − ½ tr(Λ(θ) S) − (D/2) log 2π,

and ``S`` enters only on Λ's pattern: after one pass over the data (the pattern moments)
a fit costs the same whatever the number of samples. The loss minimized here is ``−ℓ``,

    −ℓ(θ) = log Z(θ) + ½ Σ_k m_k Σ_p F_θ[k, p] S[k, p],
    ∂(−ℓ)/∂θ = −½ adjoint(m ⊙ (Σ − S)),

with ``Σ = Λ⁻¹`` read on the pattern by selected inversion. At the optimum ``Σ = S`` on
the pattern (untied; the tied model matches the sums over each tie): the classical
covariance-selection condition of Dempster (1972).

Solver. The Hessian ``½ Jᵀ (Σ ⊗ Σ) J`` is badly conditioned when pixels are strongly
correlated and their scales differ by orders of magnitude (MNIST's border pixels carry
only the added noise), so first-order methods need thousands of steps. The default is
truncated Newton: conjugate gradients on Hessian-vector products (each one gradient
evaluation, i.e. one refactorization and one selected inversion), preconditioned for
untied grids by :func:`sandwich_preconditioner`, ``v ↦ 2 Eᵀ (Λ ⊗ Λ) E v`` — the inverse
Hessian the problem would have if every entry of Λ were free, read on the pattern — and
for tied grids by the exact Hessian diagonal (``½ Σ_pp²`` for a diagonal parameter and
``Σ_pp Σ_qq + Σ_pq²`` for an edge, free from the selected inverse). On MNIST (60,000
images) the sandwich cut the gradient evaluations of a fit from 461 to 283 (4
neighbours) and from 948 to 224 (8 neighbours) against the diagonal. Where pixels are
so strongly correlated that CG stalls even so (white noise blurred by a Gaussian of 2
pixels, 8 neighbours: 200 products per step and no convergence in 100 steps), the
remaining steps use the exact Hessian from a dense Σ (:func:`dense_hessian`, models of up
to :data:`DENSE_HESSIAN_MAX_PARAMS` parameters).
"""

import numpy as np

from .._blas import one_blas_thread
from .._kernels import pair_hessian, sandwich_on_pattern, sandwich_terms, symmetric_planes
from ..normalization import GridNormalizer
from ..optimize import forward_difference_hessp, minimize, truncated_cg

__all__ = ["fit_mle", "mle_loss_grad", "kkt_residual", "independent_start", "hessian_diagonal",
           "sandwich_preconditioner", "dense_hessian", "dense_hessian_at",
           "DENSE_HESSIAN_MAX_PARAMS",
           "likelihood_gap_bounds"]


def mle_loss_grad(theta, moments, normalizer):
    """Negative mean log-likelihood, its gradient and Σ on the pattern.

    Parameters
    ----------
    theta : ndarray, shape (n_params,)
    moments : ndarray, shape (n_terms, D)
        Centred second moments on the pattern, ``S`` in the stencil layout
        (``pattern_moments(X, ...) / n_samples``).
    normalizer : GridNormalizer

    Returns
    -------
    loss : float
    grad : ndarray, shape (n_params,)
    covariance : ndarray, shape (n_terms, D)
    """
    loss, grad, pairs = _likelihood(moments, normalizer)(theta)
    return loss, grad, normalizer.grid.scatter_pairs(pairs)


def _likelihood(moments, normalizer):
    """``θ ↦ (−ℓ(θ), ∇(−ℓ)(θ), Σ on the pattern's pairs)`` for one set of moments.

    The data term ``½ tr(Λ(θ) S) = θ · c`` with ``c = ½ adjoint(m ⊙ S)`` is linear in θ,
    so ``c`` is formed once; Σ stays in pair order (scattered into the stencil layout
    only where a caller needs it): on MNIST's grid these were about a tenth of a
    gradient's 0.4 ms, which a fit takes about 200 times.
    """
    grid = normalizer.grid
    linear = 0.5 * grid.adjoint(grid.multiplicity[:, None] * moments)

    def evaluate(theta):
        log_z, grad_log_z, pairs = normalizer.value_and_grad_pairs(theta)
        return log_z + float(theta @ linear), grad_log_z + linear, pairs
    return evaluate


def kkt_residual(covariance, moments, grid):
    """Scale-free optimality residual of the MLE.

    ``max_j |adjoint(m ⊙ (Σ − S))_j| / adjoint(m ⊙ √(S_pp S_qq))_j``: for the untied
    model ``max_(p,q) |Σ_pq − S_pq| / √(S_pp S_qq)``, the largest mismatch in correlation
    units; for the tied model the same mismatch averaged over each tie.
    """
    scale = grid.adjoint(grid.multiplicity[:, None]
                         * grid.outer_fields(np.sqrt(moments[0])))
    mismatch = grid.adjoint(grid.multiplicity[:, None] * (covariance - moments))
    return float(np.max(np.abs(mismatch) / scale))


def independent_start(moments, grid):
    """θ of the independent model ``Λ₀ = diag(1 / S_pp)`` (a mean over ties)."""
    fields = np.zeros((grid.n_terms, grid.n_pixels))
    fields[0] = 1.0 / moments[0]
    return grid.project(fields)


def hessian_diagonal(covariance, grid):
    """Diagonal of the Hessian of ``−ℓ``, ``½ tr(Σ A_j Σ A_j)``, from Σ on the pattern.

    Per entry: ``½ Σ_pp²`` for a diagonal parameter and ``Σ_pp Σ_qq + Σ_pq²`` for an edge
    (untied: exact). For a tied parameter the per-entry terms are summed; the cross terms
    between entries of one tie need Σ off the pattern and are left out.
    """
    hessian = grid.outer_fields(covariance[0])
    hessian[1:] += covariance[1:] ** 2
    hessian[0] *= 0.5
    return grid.adjoint(hessian * grid.valid)


def sandwich_preconditioner(theta, grid):
    """Approximate inverse Hessian of ``−ℓ`` at θ: ``v ↦ 2 Eᵀ (Λ ⊗ Λ) E v`` (untied grids).

    Were every entry of Λ free, the Hessian of ``−ℓ`` would be ``½ (Σ ⊗ Σ)`` on symmetric
    matrices and its inverse ``2 (Λ ⊗ Λ)``: the Newton step of the complete problem is
    ``ΔΛ = Λ − Λ S Λ``. Restricted to the pattern (``E`` places θ-space vectors in a
    symmetric matrix, halving each edge; ``Eᵀ`` reads the pattern back), this is no longer
    the exact inverse, but it is SPD, exact for the independent model, and captures the
    pixel scales and correlations that make the Hessian ill-conditioned: with entries
    ``(M)_jl = Λ_pr Λ_qs + Λ_ps Λ_qr`` for ``j = (p, q)``, ``l = (r, s)`` it satisfies
    ``M ⪰ H⁻¹`` (a Schur-complement argument), so the preconditioned spectrum lies in
    ``[1, ∞)`` and conjugate gradients see only the few directions that reach beyond the
    pattern. Measured on MNIST at the optimum (dense Hessian, relative residual 1e-3):
    63 CG iterations instead of the Jacobi preconditioner's 111 (4 neighbours), 54
    instead of 229 (8 neighbours). Applying it costs ``O(K² D)`` (one stencil kernel).

    Parameters
    ----------
    theta : ndarray, shape (n_params,)
    grid : GridParameterization
        Untied.

    Returns
    -------
    callable
        ``v ↦ M v`` for ``v`` of shape ``(n_params,)``.
    """
    if grid.tying != "untied":
        raise ValueError("sandwich_preconditioner needs an untied grid.")
    offsets = np.array(grid.offsets, dtype=np.int64)
    height, width = grid.shape
    planes, full_offsets = symmetric_planes(grid.fields(theta), offsets, height, width)
    terms, counts = sandwich_terms(offsets, full_offsets)

    def apply(vector):
        # E v: the diagonal as is, each edge split evenly between (p, q) and (q, p).
        middle = grid.fields(vector)
        middle[1:] *= 0.5
        product = sandwich_on_pattern(planes, middle, offsets, full_offsets, terms, counts,
                                      height, width)
        return 2.0 * grid.adjoint(product)
    return apply


def newton_preconditioner(theta, covariance, grid):
    """The preconditioner of the MLE's Newton systems at θ (``covariance``: Σ on the
    pattern there): :func:`sandwich_preconditioner` for untied grids, the exact Hessian
    diagonal for tied ones — a tied parameter sums entries across the grid, so the
    sandwich no longer inverts anything simple, and with a handful of parameters CG
    needs few steps anyway."""
    if grid.tying == "untied":
        return sandwich_preconditioner(theta, grid)
    inverse_diagonal = 1.0 / hessian_diagonal(covariance, grid)
    return lambda vector: inverse_diagonal * vector


def likelihood_gap_bounds(theta, moments, grid, *, normalizer=None, limit=1.0,
                          max_products=20, rtol=1e-2):
    """Bounds on how far θ's mean log-likelihood lies below the MLE's, without fitting it.

    The gap ``ℓ(θ̂) − ℓ(θ)`` (nats per sample; for the untied model it is exactly
    ``KL(p_θ̂ ‖ p_θ)``, since θ̂ matches the data's moments on the pattern) is bounded
    through the Newton decrement ``δ = ½ gᵀ H⁻¹ g`` of ``f = −ℓ`` at θ. ``2f = −log det
    Λ(θ) + linear`` is a standard self-concordant function, so with ``λ = 2√δ``
    (Nesterov, *Lectures on Convex Optimization*, Thm. 5.1.13 and 5.2.1)::

        ½ ω(λ) ≤ f(θ) − f(θ̂) ≤ ½ ω*(λ)   (the right side for λ < 1),
        ω(t) = t − log(1 + t),   ω*(t) = −t − log(1 − t),

    (≈ δ when δ is small). Upper bound (untied grids): ``½ gᵀ M g ≥ δ`` with the sandwich
    preconditioner ``M ⪰ H⁻¹``, at the cost of one gradient; when it is already at most
    ``limit`` the comparison is decided and the lower bound is returned as 0 without
    further work. Lower bound: preconditioned conjugate gradients on ``H d = −g``
    (finite-difference Hessian products, each one gradient evaluation) raise
    ``−½ gᵀ d_k`` monotonically towards δ; they stop once the lower bound passes
    ``limit``, at ``max_products``, or at relative residual ``rtol``.

    Parameters
    ----------
    theta : ndarray, shape (n_params,)
        A positive-definite estimate.
    moments : ndarray, shape (n_terms, D)
        The data's second moments on the pattern (``pattern_moments(X) / n``).
    grid : GridParameterization
    normalizer : GridNormalizer, optional
    limit : float, default=1.0
        Stop refining the lower bound once it exceeds this.
    max_products : int, default=20
        Most Hessian-vector products.
    rtol : float, default=1e-2

    Returns
    -------
    lower, upper : float
        ``upper`` is ``inf`` when not available (tied grids, or ``λ ≥ 1``).
    """
    normalizer = GridNormalizer(grid) if normalizer is None else normalizer
    theta = np.asarray(theta, dtype=np.float64)
    _, grad, covariance = mle_loss_grad(theta, moments, normalizer)

    def gap_from_decrement(decrement, bound):
        t = 2.0 * np.sqrt(max(decrement, 0.0))
        if bound == "lower":
            return 0.5 * (t - np.log1p(t))
        return 0.5 * (-t - np.log1p(-t)) if t < 1 else np.inf

    apply_m = newton_preconditioner(theta, covariance, grid)
    upper = np.inf
    if grid.tying == "untied":           # the sandwich: M ⪰ H⁻¹
        upper = gap_from_decrement(0.5 * grad @ apply_m(grad), "upper")
        if np.isfinite(limit) and upper <= limit:
            return 0.0, float(upper)

    def evaluate(point):
        return mle_loss_grad(point, moments, normalizer)[:2]

    hessp = forward_difference_hessp(evaluate, lambda: grad)
    # The bound holds for CG iterates only (not for the fallback step CG returns on
    # non-positive curvature), so it is read from each iterate as CG produces it.
    bounds = [0.0]

    def passes_limit(iterate):
        bounds.append(gap_from_decrement(-0.5 * grad @ iterate, "lower"))
        return bounds[-1] > limit

    if np.any(grad):
        truncated_cg(lambda vector: hessp(theta, vector), grad, apply_m, max_products, rtol,
                     stop=passes_limit)
    lower = bounds[-1]
    return float(lower), float(max(upper, lower))


#: Most parameters for which a stalled conjugate-gradient solve falls back to the exact
#: dense Hessian: p² doubles (128 MiB at 4,096) and a Cholesky of p³/3 flops (under a
#: second on 2 cores). MNIST's 8-neighbour model has 3,754 parameters.
DENSE_HESSIAN_MAX_PARAMS = 4096


def dense_hessian(covariance, grid):
    """Exact Hessian of ``−ℓ`` from the dense ``Σ = Λ⁻¹`` (untied grids).

    With ``Λ(θ) = Σ_j θ_j A_j``, ``A_j = c_j (E_pq + E_qp)`` (``c = ½`` on the diagonal,
    where p = q, and 1 on an edge), ``H_jl = ½ tr(Σ A_j Σ A_l) = c_j c_l (Σ_pr Σ_qs +
    Σ_ps Σ_qr)`` for ``j = (p, q)``, ``l = (r, s)``, assembled by a compiled loop
    (:func:`~sparsegauss._kernels.pair_hessian`, 8× faster than four NumPy gathers).

    Parameters
    ----------
    covariance : ndarray, shape (D, D)
        Dense Σ.
    grid : GridParameterization
        Untied.

    Returns
    -------
    ndarray, shape (n_params, n_params)
    """
    if grid.tying != "untied":
        raise ValueError("dense_hessian needs an untied grid.")
    rows, cols = grid.pair_indices()
    c = np.where(rows == cols, 0.5, 1.0)
    return pair_hessian(np.ascontiguousarray(covariance, dtype=np.float64), rows, cols, c)


def fit_mle(moments, grid, *, theta0=None, tol=1e-8, max_iter=100, solver="newton-cg",
            callback=None, normalizer=None):
    """Maximum-likelihood θ for the pattern moments of centred data.

    Parameters
    ----------
    moments : ndarray, shape (n_terms, D)
        ``S`` on the pattern in the stencil layout; ``moments[0]`` must be positive.
    grid : GridParameterization
    theta0 : ndarray, shape (n_params,), optional
        Start; the independent model by default. Must be positive definite and, for
        the preconditioner, have a positive diagonal.
    tol : float, default=1e-8
        Stop when :func:`kkt_residual` ``<= tol``.
    max_iter : int, default=100
        Most outer iterations (Newton steps, or L-BFGS steps).
    solver : {"newton-cg", "lbfgs"}, default="newton-cg"
        See :func:`sparsegauss.optimize.minimize`. Newton-CG converges in tens of
        iterations on MNIST; L-BFGS needs hundreds to thousands.
    callback : callable, optional
        Passed to :func:`sparsegauss.optimize.minimize`.
    normalizer : GridNormalizer, optional
        Reuse an existing symbolic analysis.

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` is θ̂; ``fun`` the negative mean log-likelihood; ``residual`` the KKT
        residual; ``history`` per iteration.
    """
    normalizer = GridNormalizer(grid) if normalizer is None else normalizer
    theta0 = independent_start(moments, grid) if theta0 is None else np.asarray(theta0, float)
    likelihood = _likelihood(moments, normalizer)
    evaluated = {}

    def loss_grad(theta):
        loss, grad, pairs = likelihood(theta)
        evaluated.update(theta=theta, pairs=pairs)
        return loss, grad

    def covariance_at(theta):
        # The optimizer asks about the point it evaluated last (the accepted one).
        if evaluated.get("theta") is not theta:
            loss_grad(theta)
        return grid.scatter_pairs(evaluated["pairs"])

    def residual(theta, loss, grad):
        return kkt_residual(covariance_at(theta), moments, grid)

    def precondition(theta):
        return newton_preconditioner(theta, covariance_at(theta), grid)

    # Newton-CG asks for the exact Hessian only when conjugate gradients stalled
    # (strongly correlated pixels, where the sandwich preconditioner misses what lies
    # beyond the pattern): the exact Newton step reaches the optimum in tens of steps
    # where CG crawled for hundreds.
    # Every gradient runs two small kernels on one BLAS thread: the context is held for
    # the whole run (direct Newton steps step out of it for their dense Cholesky).
    with one_blas_thread():
        return minimize(loss_grad, theta0, method=solver, tol=tol, maxiter=max_iter,
                        callback=callback, convergence=residual, precondition=precondition,
                        hessian=lambda theta: dense_hessian_at(theta, grid))


def dense_hessian_at(theta, grid):
    """:func:`dense_hessian` at ``θ``, from a dense inverse of ``Λ(θ)``; None for tied
    grids and models of more than :data:`DENSE_HESSIAN_MAX_PARAMS` parameters (what
    Newton-CG's ``hessian`` returns when there is none to use)."""
    if grid.tying != "untied" or grid.n_params > DENSE_HESSIAN_MAX_PARAMS:
        return None
    return dense_hessian(np.linalg.inv(grid.precision(theta).toarray()), grid)
