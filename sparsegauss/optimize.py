"""Optimizers behind one ``minimize`` interface.

``minimize(fun, x0, *, method, tol, maxiter, callback, convergence)`` follows
``scipy.optimize.minimize``: ``fun(x)`` returns ``(loss, gradient)``; the result is a
:class:`scipy.optimize.OptimizeResult` with ``x, fun, jac, nit, nfev, success, message``
and ``history`` (one dict per iteration: ``iteration, loss, time, residual``), and for
the stochastic methods ``thread_choices`` (:attr:`sparsegauss._threads.ThreadChooser.
choices`: the Numba thread count each of its steps ran on, chosen by timing);
``callback(intermediate_result)`` may raise ``StopIteration`` to stop early.

``"lbfgs"`` is a limited-memory BFGS with a backtracking line search that treats a
:class:`~sparsegauss.exceptions.NotPositiveDefiniteError` raised by ``fun`` as "step too
long": it halves the step and tries again, so iterates never leave the domain (the
positive-definite cone for likelihoods that need ``log det Λ``). SciPy's L-BFGS-B cannot
do that: a non-finite value aborts its line search.

``"newton-cg"`` is a truncated Newton method (Nash 2000; Nocedal & Wright, Alg. 7.2):
each outer iteration solves ``H d = −g`` approximately by preconditioned conjugate
gradients, to a relative residual ``η = min(0.5, √‖g‖)`` (Eisenstat–Walker's choice, for
superlinear convergence), then takes the same domain-safe line search. Hessian-vector
products default to a forward difference of the gradient, ``(g(x + εv) − g(x)) / ε``,
which costs one gradient evaluation and is accurate to ``O(ε)``; only the Newton step,
never the gradient that decides convergence, carries that error. Given ``hessian(x)``,
the exact Hessian, it switches to direct Newton steps (Cholesky) for the rest of the run
once CG has stalled — used ``max_cg`` products without reaching its forcing term — as it
does when the preconditioner misses most of the Hessian's spread. Successive Newton
systems share most of their spectrum, so each CG solve recycles the previous ones: the
largest Ritz values of the preconditioned Hessian found by the last solves are deflated
to 1 in the next preconditioner (a spectral limited-memory preconditioner, Gratton,
Sartenaer & Tshimanga 2011; see :class:`_KrylovRecord`).

``"scipy-lbfgs"`` is SciPy's L-BFGS-B, for objectives defined everywhere (a
``NotPositiveDefiniteError`` from ``fun`` ends its run with an error).

``"adam"``, ``"sgd"`` (with momentum) and ``"rmsprop"`` are stochastic: ``fun`` is called
once per step and is expected to draw a fresh minibatch (and fresh noise) itself. The
step size follows ``learning_rate × schedule(t)``; a step that leaves the domain is
retried from the previous point with half the step. They stop after ``maxiter`` steps or
when the mean loss over a window of ``window`` steps improves on the previous window's by
less than ``tol`` relative to its size, after discounting two standard errors of the
difference (a plateau: no progress the minibatch noise can show; ``tol <= 0`` disables
the test, and the run takes all ``maxiter`` steps). A run stopped on a plateau returns the
mean of the last window's iterates: on a plateau the iterates wander about the optimum by
an amount set by the learning rate, which a plateau early in the schedule has not yet
decayed (NCE's second phase, started near its answer, met the test at step 150 of 2,000,
and its last iterate lay KL 1.4–1.9 from the MLE on MNIST against 0.03 at the end of the
schedule).
"""

import time
from collections import deque

import numpy as np
from scipy.optimize import OptimizeResult

from . import _kernels
from ._blas import all_blas_threads, one_blas_thread
from ._threads import ThreadChooser, last_choice
from .exceptions import NotPositiveDefiniteError, SparseGaussError

__all__ = ["minimize", "METHODS", "truncated_cg", "forward_difference_hessp"]

METHODS = ("newton-cg", "lbfgs", "scipy-lbfgs", "adam", "sgd", "rmsprop")
#: Methods that call ``fun`` once per step on a fresh minibatch.
STOCHASTIC = ("adam", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "inverse-sqrt")

# Armijo's sufficient-decrease constant; the usual value (Nocedal & Wright, §3.1).
_ARMIJO = 1e-4
_MAX_BACKTRACKS = 60
_HZ_DELTA = 0.1
_LOSS_RESOLUTION = 1e-10

# Krylov recycling in Newton-CG. Gradient evaluations of the MLE without → with it
# (2026-12-01, fit_mle on the centred moments; 4 / 8 neighbours): MNIST 283 → 190 /
# 223 → 177; 500 blurred 20 × 24 images (σ = 1.25 px) 616 → 490 / 674 → 645, (σ = 2 px)
# 524 → 610 / 571 → 465; 30 blurred 40 × 40 images 804 → 428 / 964 → 652. Counts on the blurred images move by
# ±15 % with rounding (the forward-difference Hessian amplifies it); in time only the
# σ = 2 px 4-neighbour case was slower (0.64 → 0.68–0.86 s).
#: Memory for the vectors one CG solve records (two of length n per CG iteration): above
#: a few hundred thousand parameters there is room for too few, and recycling is off.
_RECYCLE_BYTES = 64 * 2**20
#: Fewest recorded CG iterations worth a Rayleigh–Ritz step.
_RECYCLE_MIN_STEPS = 4
#: Ritz pairs deflated per solve: the largest ones, and only those above
#: ``_RITZ_MIN_VALUE`` (deflating a value near 1 buys nothing). 20 and 50 gave the same
#: counts on MNIST; 30 was best on the smoothed images.
_RITZ_PAIRS = 30
_RITZ_MIN_VALUE = 2.0
#: Layers of deflation kept before starting over from the bare preconditioner: the
#: Ritz vectors describe Hessians of earlier iterates, and stacking them without end
#: lets stale ones accumulate (2 layers: 219 evaluations on MNIST, 5: 210, 3: 190).
_RECYCLE_LAYERS = 3


def minimize(fun, x0, *, method="lbfgs", tol=1e-8, maxiter=500, callback=None,
             convergence=None, memory=10, precondition=None, hessp=None, hessian=None,
             max_cg=200,
             learning_rate=1e-2, schedule="constant", momentum=0.9, betas=(0.9, 0.999),
             window=50, average=0.0):
    """Minimize ``fun`` from ``x0``.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (loss, gradient)``; may raise ``NotPositiveDefiniteError`` where the
        objective is undefined.
    x0 : ndarray, shape (n,)
    method : {"lbfgs", "newton-cg"}, default="lbfgs"
    tol : float, default=1e-8
        Stop when ``convergence(x, loss, gradient) <= tol``.
    maxiter : int, default=500
    callback : callable, optional
        Called as ``callback(intermediate_result)`` after each iteration with an
        ``OptimizeResult`` holding ``x, fun, jac, nit, residual``; raising
        ``StopIteration`` ends the run.
    convergence : callable, optional
        ``convergence(x, loss, gradient) -> float``; default ``max |gradient|``.
    memory : int, default=10
        Number of correction pairs L-BFGS keeps.
    precondition : callable, optional
        ``precondition(x)`` returns a function applying an SPD approximation of the
        inverse Hessian at ``x`` to a vector: L-BFGS's initial matrix ``H₀``, and the
        preconditioner of Newton-CG's inner iterations.
    hessp : callable, optional
        ``hessp(x, v) -> H(x) v`` for Newton-CG; default a forward difference of the
        gradient.
    hessian : callable, optional
        ``hessian(x) -> ndarray (n, n) or None``, the exact Hessian for Newton-CG. Once
        conjugate gradients stall (``max_cg`` products without reaching the forcing
        term: a Hessian too ill-conditioned for the preconditioner), every later Newton
        step is solved with it directly, by Cholesky; ``None`` from it (too large) keeps
        the truncated step.
    max_cg : int, default=200
        Most conjugate-gradient iterations per Newton step.
    learning_rate : float, default=1e-2
        Step size of the stochastic methods.
    schedule : {"constant", "cosine", "inverse-sqrt"}, default="constant"
        Learning-rate multiplier at step ``t`` of ``T = maxiter``: 1, ``½(1 + cos(πt/T))``
        or ``1/√(1 + 10 t/T)``.
    momentum : float, default=0.9
        SGD's momentum.
    betas : (float, float), default=(0.9, 0.999)
        Adam's decay rates of the first and second moments (RMSProp uses the second).
    window : int, default=50
        Steps per window of the stochastic methods' plateau test.
    average : float, default=0.0
        Stochastic methods: the share of the last ``maxiter`` steps whose iterates are
        averaged into the returned ``x`` (Polyak–Ruppert tail averaging; 0 returns the
        last iterate). The average of a run's iterates has the noise of the gradients
        averaged over those steps, not that of the last few. ``fun`` (the loss) stays
        the last iterate's; a run stopped early averages what it has of the tail.

    Returns
    -------
    scipy.optimize.OptimizeResult

    Raises
    ------
    SparseGaussError
        When the loss or gradient becomes non-finite (naming the iteration), or the
        starting point is outside the domain.
    """
    if method not in METHODS:
        raise ValueError(f"The 'method' parameter of minimize must be one of {METHODS}. "
                         f"Got {method!r} instead.")
    if convergence is None:
        def convergence(x, loss, grad):
            return float(np.max(np.abs(grad)))
    x0 = np.array(x0, dtype=np.float64)
    if method in STOCHASTIC:
        if schedule not in SCHEDULES:
            raise ValueError(f"The 'schedule' parameter of minimize must be one of "
                             f"{SCHEDULES}. Got {schedule!r} instead.")
        if not learning_rate > 0:
            raise ValueError("The 'learning_rate' parameter of minimize must be > 0. "
                             f"Got {learning_rate!r} instead.")
        if not 0.0 <= average <= 1.0:
            raise ValueError("The 'average' parameter of minimize must be in [0, 1]. "
                             f"Got {average!r} instead.")
        return _stochastic(fun, x0, method, tol, int(maxiter), callback, learning_rate,
                           schedule, momentum, betas, int(window), float(average))
    if method == "scipy-lbfgs":
        return _scipy_lbfgs(fun, x0, tol, int(maxiter), callback, convergence, int(memory))
    if method == "newton-cg":
        return _newton_cg(fun, x0, tol, int(maxiter), callback, convergence, precondition,
                          hessp, hessian, int(max_cg))
    return _lbfgs(fun, x0, tol, int(maxiter), callback, convergence, int(memory),
                  precondition)


def _checked(fun, x, iteration):
    loss, grad = fun(x)
    if not np.isfinite(loss) or not np.all(np.isfinite(grad)):
        raise SparseGaussError(f"The loss or its gradient became non-finite at iteration "
                               f"{iteration} (loss={loss}); the fit was stopped.")
    return float(loss), np.asarray(grad, dtype=np.float64)


def _two_loop(grad, pairs, precondition):
    """L-BFGS direction ``-H grad`` from the stored pairs (Nocedal & Wright, Alg. 7.4).

    ``precondition`` plays the initial inverse Hessian ``H₀`` when given; otherwise
    ``H₀ = (sᵀy / yᵀy) I`` from the newest pair.
    """
    q = grad.copy()
    alphas = []
    for s, y, rho, _ in reversed(pairs):
        alpha = rho * (s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if precondition is not None:
        q = precondition(q)
        if pairs:
            # Rescale H₀ by sᵀy / yᵀH₀y of the newest pair: a preconditioner that is right
            # up to a constant factor (a Fisher metric for NCE) then stays right.
            q *= pairs[-1][3]
    elif pairs:
        s, y, _, _ = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y, rho, _), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - rho * (y @ q)) * s
    return -q


class _Run:
    """Book-keeping shared by the methods: evaluations, history, callback, stopping."""

    def __init__(self, fun, x, tol, callback, convergence):
        self.fun, self.tol, self.callback, self.convergence = fun, tol, callback, convergence
        self.start = time.perf_counter()
        try:
            self.loss, self.grad = _checked(fun, x, 0)
        except NotPositiveDefiniteError as exc:
            raise SparseGaussError("The starting point is outside the objective's domain: "
                                   f"{exc}") from exc
        self.x, self.nfev, self.iteration = x, 1, 0
        self.residual = convergence(x, self.loss, self.grad)
        self.history = [dict(iteration=0, loss=self.loss, time=0.0, residual=self.residual,
                             nfev=1)]
        self.success = self.residual <= tol
        self.message = "converged" if self.success else ""

    def evaluate(self, x):
        self.nfev += 1
        return _checked(self.fun, x, self.iteration)

    def line_search(self, direction):
        """Backtracking from a unit step; returns the accepted (x, loss, grad) or None."""
        slope = self.grad @ direction
        step = 1.0
        for _ in range(_MAX_BACKTRACKS):
            trial = self.x + step * direction
            try:
                loss, grad = self.evaluate(trial)
            except NotPositiveDefiniteError:
                step *= 0.5
                continue
            if loss <= self.loss + _ARMIJO * step * slope:
                return trial, loss, grad
            # Near the optimum the loss cannot resolve the decrease (it is below its
            # rounding error); accept on the slope instead: Hager & Zhang's (2005)
            # approximate Wolfe condition, φ'(α) ≤ (2δ − 1) φ'(0), with δ = 0.1.
            if (abs(loss - self.loss) <= _LOSS_RESOLUTION * abs(self.loss)
                    and grad @ direction <= (2 * _HZ_DELTA - 1) * slope):
                return trial, loss, grad
            # Minimizer of the quadratic through loss, slope and the trial loss, kept in
            # [0.1, 0.5] of the current step so backtracking always makes progress.
            curvature = loss - self.loss - slope * step
            guess = -slope * step * step / (2.0 * curvature) if curvature > 0 else 0.5 * step
            step = min(max(guess, 0.1 * step), 0.5 * step)
        self.message = (f"line search failed at iteration {self.iteration}: no step along "
                        "the search direction decreased the loss (the tolerance may be "
                        "below what floating point can resolve)")
        return None

    def accept(self, x, loss, grad):
        """Move to a new iterate; returns False when the run should stop."""
        self.x, self.loss, self.grad = x, loss, grad
        self.residual = self.convergence(x, loss, grad)
        self.history.append(dict(iteration=self.iteration, loss=loss,
                                 time=time.perf_counter() - self.start,
                                 residual=self.residual, nfev=self.nfev))
        self.success = self.residual <= self.tol
        if self.success:
            self.message = "converged"
        if self.callback is not None:
            try:
                self.callback(OptimizeResult(x=x, fun=loss, jac=grad, nit=self.iteration,
                                             residual=self.residual))
            except StopIteration:
                self.message = f"stopped by the callback at iteration {self.iteration}"
                return False
        return not self.success

    def result(self, maxiter):
        if not self.message:
            self.message = (f"reached maxiter={maxiter} with residual {self.residual:.3g} "
                            f"> tol={self.tol:g}")
        return OptimizeResult(x=self.x, fun=self.loss, jac=self.grad, nit=self.iteration,
                              nfev=self.nfev, success=bool(self.success),
                              message=self.message, residual=self.residual,
                              history=self.history)


def _lbfgs(fun, x, tol, maxiter, callback, convergence, memory, precondition):
    run = _Run(fun, x, tol, callback, convergence)
    pairs = deque(maxlen=memory)
    while not run.success and run.iteration < maxiter:
        run.iteration += 1
        apply_h0 = precondition(run.x) if precondition is not None else None
        direction = _two_loop(run.grad, pairs, apply_h0)
        if run.grad @ direction >= 0:          # not a descent direction: restart
            pairs.clear()
            direction = -run.grad
        if not pairs and precondition is None:
            # No curvature information yet: a first step of unit length in max-norm.
            direction = direction / max(1.0, np.max(np.abs(direction)))
        accepted = run.line_search(direction)
        if accepted is None:
            break
        s, y = accepted[0] - run.x, accepted[2] - run.grad
        sy = s @ y
        if sy > 1e-12 * np.sqrt((s @ s) * (y @ y)):   # keep the inverse Hessian SPD
            gamma = sy / (y @ apply_h0(y)) if apply_h0 is not None else 1.0
            pairs.append((s, y, 1.0 / sy, gamma))
        if not run.accept(*accepted):
            break
    return run.result(maxiter)


#: The last Newton systems are solved to a relative residual of at least this times
#: ``tol / residual``. 0.5 rather than 0.1 saved 4–25 of 173–679 gradients on each of
#: twelve MLE fits (MNIST 60,000 and 2,000 images, smoothed and white-noise images, both
#: stencils) and cost none anywhere (2026-12-04, ``python -m benchmarks.one_off.mle_solver_cases``); the exponent of
#: the forcing term (½) and Eisenstat–Walker's second choice were measured there too:
#: ¾ and EW2 saved gradients on MNIST and cost more on the smoothed images.
_FORCING_FLOOR = 0.5

#: Halvings of the finite-difference step before a Hessian product gives up, and how far
#: inside the domain the step is then kept (a fraction of the first step that was inside).
_MAX_DIFFERENCE_HALVINGS = 60
_INSIDE_FRACTION = 1e-3


def forward_difference_hessp(evaluate, gradient):
    """``H(x) v`` by a forward difference of gradients that stays inside the domain.

    ``evaluate(y) -> (loss, grad)``; ``gradient()`` is the gradient at the point ``x``
    the products are taken at (already known to the caller: one evaluation per product).

    The iterate ``x`` lies inside the positive-definite cone, which is open, so a short
    enough step along ``v`` stays inside too. Near the boundary (a log-barrier path at a
    small weight, strongly correlated pixels) the default step ``√eps (1 + ‖x‖) / ‖v‖``
    can leave it, and the product then raised ``NotPositiveDefiniteError`` and ended the
    fit. Now the step is halved until it is inside, and then cut to
    :data:`_INSIDE_FRACTION` of that: the curvature changes on the scale of the distance
    to the boundary, which the first inside step measures to within a factor of 2.
    """
    def hessp(x, vector):
        # ε balances truncation O(ε‖v‖²) against rounding O(eps/ε): √eps in x's scale.
        eps = np.sqrt(np.finfo(float).eps) * (1.0 + np.linalg.norm(x)) / np.linalg.norm(vector)
        for halvings in range(_MAX_DIFFERENCE_HALVINGS):
            try:
                _, shifted = evaluate(x + eps * vector)
            except NotPositiveDefiniteError:
                eps *= 0.5
                continue
            if halvings:
                eps *= _INSIDE_FRACTION
                _, shifted = evaluate(x + eps * vector)
            return (shifted - gradient()) / eps
        raise NotPositiveDefiniteError(
            "A Hessian-vector product found no step along v, down to "
            f"{eps:.1e}, that keeps the parameters positive definite: the iterate lies on "
            "the boundary of the cone.")
    return hessp


def _forward_difference_hessp(run):
    """:func:`forward_difference_hessp` at a Newton-CG run's current iterate."""
    return forward_difference_hessp(run.evaluate, lambda: run.grad)


def _newton_cg(fun, x, tol, maxiter, callback, convergence, precondition, hessp, hessian,
               max_cg):
    run = _Run(fun, x, tol, callback, convergence)
    hessp = _forward_difference_hessp(run) if hessp is None else hessp
    initial_norm = max(np.linalg.norm(run.grad), np.finfo(float).tiny)
    direct = False                 # solve by the exact Hessian, after CG has stalled once
    n_direct = 0
    capacity = min(max_cg, _RECYCLE_BYTES // (16 * x.size))
    deflations = []                # Ritz layers of the last solves, oldest first
    while not run.success and run.iteration < maxiter:
        run.iteration += 1
        direction = _direct_newton_step(hessian, run.x, run.grad) if direct else None
        if direction is None:
            apply_m = precondition(run.x) if precondition is not None else (lambda v: v)
            # Eisenstat & Walker's forcing term, made scale-free with the first gradient,
            # and floored so that the last steps do not solve more accurately than
            # ``tol`` needs (a relative reduction of the residual by ``tol / residual``,
            # with a margin: see _FORCING_FLOOR).
            forcing = max(min(0.5, np.sqrt(np.linalg.norm(run.grad) / initial_norm)),
                          _FORCING_FLOOR * tol / run.residual)
            record = _KrylovRecord(capacity) if capacity >= _RECYCLE_MIN_STEPS else None
            try:
                direction, stalled = truncated_cg(
                    lambda v: hessp(run.x, v), run.grad, _deflated(apply_m, deflations),
                    max_cg, min(forcing, 0.5), record=record)
            except _IndefinitePreconditioner as failed:
                # The old Ritz vectors no longer fit the new preconditioner (it moved too
                # far since they were found): go on from where CG got to without them.
                deflations = []
                record = _KrylovRecord(capacity)
                direction, stalled = truncated_cg(
                    lambda v: hessp(run.x, v), run.grad, apply_m, max_cg - failed.steps,
                    min(forcing, 0.5), record=record,
                    start=(failed.direction, failed.residual))
            layer = record.deflation() if record is not None else None
            if layer is not None:
                deflations.append(layer)
                if len(deflations) > _RECYCLE_LAYERS:
                    deflations = []
            direct = stalled and hessian is not None
        else:
            n_direct += 1
        accepted = run.line_search(direction)
        if accepted is None:
            break
        if not run.accept(*accepted):
            break
    result = run.result(maxiter)
    result.n_direct_steps = n_direct
    return result


class _IndefinitePreconditioner(SparseGaussError):
    """A preconditioned residual with ``rᵀ M r <= 0``: ``M`` is not positive definite.

    Carries CG's iterate, its residual and the products used so far, to go on from."""

    def __init__(self, message, direction, residual, steps):
        super().__init__(message)
        self.direction, self.residual, self.steps = direction, residual, steps


class _KrylovRecord:
    """What one preconditioned CG solve saw, for Ritz pairs of its preconditioned Hessian.

    CG on ``H d = −g`` with preconditioner ``M`` is Lanczos on ``M H`` in the ``M⁻¹``
    inner product: the preconditioned residuals ``z_i = M r_i`` are ``M⁻¹``-orthogonal
    (``z_iᵀ M⁻¹ z_j = z_iᵀ r_j = 0``). Rayleigh–Ritz on their span needs ``Zᵀ H Z`` and
    ``Zᵀ M⁻¹ Z = Zᵀ R``, both from what CG computed anyway: ``H p_i = (r_i − r_{i+1}) /
    α_i`` and ``z_i = p_i − β_{i−1} p_{i−1}``; no further products with ``H``. The Gram
    matrices are formed from the stored vectors, not from the CG coefficients alone, so
    that the loss of orthogonality in finite precision (and the forward-difference
    Hessian's noise) cannot produce spurious Ritz values.

    Parameters
    ----------
    capacity : int
        Most CG iterations recorded (two vectors each).
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self.z, self.r, self.alpha, self.beta = [], [], [], []

    def start(self, residual, z):
        self.r.append(residual.copy())
        self.z.append(z.copy())

    def step(self, alpha, residual):
        if len(self.alpha) < self.capacity:
            self.alpha.append(alpha)
            self.r.append(residual.copy())

    def next_direction(self, beta, z):
        if len(self.z) < self.capacity:
            self.beta.append(beta)
            self.z.append(z.copy())

    def deflation(self):
        """The largest Ritz pairs ``(θ_k, y_k)`` of ``M H`` with ``θ_k > 2``, as the
        correction ``Y diag(1/θ − 1) Yᵀ`` that sends them to 1 when added to ``M``:
        with ``Y`` ``M⁻¹``-orthonormal and ``H y_k = θ_k M⁻¹ y_k``, ``(M + Y diag(1/θ − 1)
        Yᵀ) H y_k = y_k``, and the sum is positive definite (its eigenvalues relative to
        ``M`` are ``1/θ_k`` and 1). Returns ``(Y, 1/θ − 1)`` or None."""
        m = len(self.alpha)
        if m < _RECYCLE_MIN_STEPS:
            return None
        with one_blas_thread():          # small products: no BLAS threads left spinning
            return self._deflation(m)

    def _deflation(self, m):
        z = np.array(self.z[:m])
        r = np.array(self.r[:m + 1])
        h_search = (r[:-1] - r[1:]) / np.array(self.alpha)[:, None]
        h_z = h_search.copy()
        h_z[1:] -= np.array(self.beta[:m - 1])[:, None] * h_search[:-1]
        stiffness = z @ h_z.T
        gram = z @ r[:-1].T
        # A basis of span(Z) orthonormal in M⁻¹, dropping directions CG repeated.
        values, vectors = np.linalg.eigh(0.5 * (gram + gram.T))
        keep = values > 1e-10 * values[-1]
        basis = vectors[:, keep] / np.sqrt(values[keep])
        projected = basis.T @ stiffness @ basis
        ritz, coordinates = np.linalg.eigh(0.5 * (projected + projected.T))
        chosen = np.flatnonzero(ritz > _RITZ_MIN_VALUE)[::-1][:_RITZ_PAIRS]
        if not chosen.size:
            return None
        return (basis @ coordinates[:, chosen]).T @ z, 1.0 / ritz[chosen] - 1.0


def _deflated(apply_m, deflations):
    """``M + Σ_layers Y diag(c) Yᵀ``: the preconditioner with earlier Ritz pairs sent to 1."""
    if not deflations:
        return apply_m
    # The layers' sum is one low-rank term: two matrix-vector products per application.
    ritz_vectors = np.concatenate([layer[0] for layer in deflations])
    coefficients = np.concatenate([layer[1] for layer in deflations])

    def apply(vector):
        with one_blas_thread():
            return apply_m(vector) + (coefficients * (ritz_vectors @ vector)) @ ritz_vectors
    return apply


def _direct_newton_step(hessian, x, grad):
    """``−H⁻¹ g`` by Cholesky of the exact Hessian, or None when there is none to use."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    with all_blas_threads():        # dense work of p² to p³: every BLAS thread helps
        matrix = hessian(x)
        if matrix is None:
            return None
        try:
            return -cho_solve(cho_factor(matrix, overwrite_a=True), grad)
        except LinAlgError:         # not numerically positive definite: keep CG's step
            return None


def truncated_cg(hessp, grad, apply_m, max_iter, rtol, stop=None, record=None,
                 start=None):
    """Approximate solution of ``H d = −g`` by preconditioned CG from ``d = 0``, truncated.

    Stops at relative residual ``rtol``, at ``max_iter`` iterations, when ``stop(d)`` is
    true (it is called with every CG iterate ``d``), or on non-positive curvature (then returns the last
    descent iterate, or the preconditioned gradient step when there is none). Each
    iterate minimizes the quadratic model ``gᵀd + ½ dᵀHd`` over a growing Krylov space,
    so ``−½ gᵀ d`` rises monotonically to the Newton decrement ``½ gᵀH⁻¹g``.

    ``record`` (a :class:`_KrylovRecord`) keeps the residuals and preconditioned
    residuals for recycling. Raises :class:`_IndefinitePreconditioner` when ``apply_m``
    gives a residual ``rᵀ M r <= 0``; ``start = (d, r)``, an earlier iterate and its
    residual ``−g − H d``, goes on from there (from a lower quadratic model than 0, so the
    result stays a descent direction).

    Returns
    -------
    direction : ndarray
    stalled : bool
        Whether CG used all ``max_iter`` iterations without reaching ``rtol`` (or
        ``stop``).
    """
    tolerance = rtol * np.linalg.norm(grad)
    if start is None:
        direction, residual = np.zeros_like(grad), -grad
    else:
        direction, residual = start[0].copy(), start[1].copy()
    z = apply_m(residual)
    search = z.copy()
    rz = _preconditioned_norm(residual, z, direction, 0)
    if record is not None:
        record.start(residual, z)
    for step in range(max_iter):
        h_search = hessp(search)
        curvature = search @ h_search
        if curvature <= 0:
            return (direction if np.any(direction) else search), False
        alpha = rz / curvature
        direction += alpha * search
        residual -= alpha * h_search
        if record is not None:
            record.step(alpha, residual)
        if (stop is not None and stop(direction)) or np.linalg.norm(residual) <= tolerance:
            return direction, False
        z = apply_m(residual)
        rz_next = _preconditioned_norm(residual, z, direction, step + 1)
        search = z + (rz_next / rz) * search
        if record is not None:
            record.next_direction(rz_next / rz, z)
        rz = rz_next
    return direction, True


def _preconditioned_norm(residual, z, direction, steps):
    """``rᵀ M r`` (``z = M r``), which must be positive for a nonzero residual."""
    rz = residual @ z
    if not rz > 0 and np.any(residual):
        raise _IndefinitePreconditioner(f"rᵀ M r = {rz:.3g} for a nonzero residual",
                                        direction, residual, steps)
    return rz


def _scipy_lbfgs(fun, x, tol, maxiter, callback, convergence, memory):
    """SciPy's L-BFGS-B, reporting through the same history and callback."""
    from scipy.optimize import minimize as scipy_minimize

    run = _Run(fun, x, tol, callback, convergence)
    if run.success:
        return run.result(maxiter)
    stopped = []

    def objective(z):
        return run.evaluate(z)

    def each_step(intermediate_result):
        run.iteration += 1
        z = intermediate_result.x
        loss, grad = run.evaluate(z)     # SciPy does not hand the gradient to callbacks
        if not run.accept(z.copy(), loss, grad):
            stopped.append(True)
            raise StopIteration

    scipy_minimize(objective, x, jac=True, method="L-BFGS-B", callback=each_step,
                   options=dict(maxiter=maxiter, maxcor=memory, gtol=0.0, ftol=0.0))
    if not stopped and not run.success and not run.message:
        run.message = (f"SciPy's L-BFGS-B stopped at iteration {run.iteration} "
                       f"with residual {run.residual:.3g} > tol={tol:g}")
    return run.result(maxiter)


def _learning_rate_factor(schedule, step, maxiter):
    if schedule == "cosine":
        return 0.5 * (1.0 + np.cos(np.pi * min(step, maxiter) / maxiter))
    if schedule == "inverse-sqrt":
        return 1.0 / np.sqrt(1.0 + 10.0 * step / maxiter)
    return 1.0


def _stochastic(fun, x, method, tol, maxiter, callback, learning_rate, schedule, momentum,
                betas, window, average=0.0):
    # Thousands of short steps: each on the Numba thread count its last probe found
    # faster (all, or one when another process holds a core; see _threads).
    with ThreadChooser(start=last_choice()) as chooser:
        return _stochastic_steps(fun, x, method, tol, maxiter, callback, learning_rate,
                                 schedule, momentum, betas, window, average, chooser)


def _stochastic_steps(fun, x, method, tol, maxiter, callback, learning_rate, schedule,
                      momentum, betas, window, average, chooser):
    start = time.perf_counter()
    try:
        loss, grad = _checked(fun, x, 0)
    except NotPositiveDefiniteError as exc:
        raise SparseGaussError("The starting point is outside the objective's domain: "
                               f"{exc}") from exc
    first = np.zeros_like(x)      # momentum (SGD) or first moment (Adam)
    second = np.zeros_like(x)     # second moment (Adam, RMSProp)
    beta1, beta2 = betas
    losses = [loss]
    history = [dict(iteration=0, loss=loss, time=0.0, residual=np.inf, nfev=1)]
    nfev, success, message, residual = 1, False, "", np.inf
    iteration = 0
    # Iterates after step ``first_averaged`` are summed into ``tail`` (when averaging).
    first_averaged = maxiter - int(round(average * maxiter))
    tail, n_tail = np.zeros_like(x), 0
    window_sum = np.zeros_like(x)     # iterates of the current plateau-test window
    while iteration < maxiter:
        iteration += 1
        rate = learning_rate * _learning_rate_factor(schedule, iteration, maxiter)
        if method == "sgd":
            first = momentum * first - rate * grad
            step = first
        elif method == "rmsprop":
            second = beta2 * second + (1 - beta2) * grad * grad
            step = -rate * grad / (np.sqrt(second) + 1e-8)
        else:
            # One compiled loop over the moments in place: the eight NumPy expressions
            # it replaces cost 25 µs a step on 2,297 parameters, a tenth of NCE's step
            # on MNIST (same results: the same operations in the same order).
            step = _kernels.adam_step(grad, first, second, beta1, beta2,
                                      1 - beta1 ** iteration, 1 - beta2 ** iteration, rate)
        for _ in range(_MAX_BACKTRACKS):
            trial = x + step
            try:
                new_loss, new_grad = chooser.run(_checked, fun, trial, iteration)
                nfev += 1
                break
            except NotPositiveDefiniteError:
                nfev += 1
                step = 0.5 * step
        else:
            message = f"no step stayed in the objective's domain at iteration {iteration}"
            break
        x, loss, grad = trial, new_loss, new_grad
        if iteration > first_averaged:
            tail += x
            n_tail += 1
        window_sum += x
        losses.append(loss)
        if iteration % window == 0 and iteration >= 2 * window:
            current, previous = losses[-window:], losses[-2 * window:-window]
            # Improvement of the windowed mean, less two standard errors of the
            # difference: a minibatch loss is noisy, and a drop within the noise is not
            # progress.
            noise = 2.0 * np.sqrt((np.var(current) + np.var(previous)) / window)
            residual = ((np.mean(previous) - np.mean(current) - noise)
                        / max(abs(np.mean(current)), 1e-300))
        history.append(dict(iteration=iteration, loss=loss, time=time.perf_counter() - start,
                            residual=residual, nfev=nfev))
        if tol > 0 and residual <= tol:
            success, message = True, "converged (the windowed mean loss stopped improving)"
        if callback is not None:
            try:
                callback(OptimizeResult(x=x, fun=loss, jac=grad, nit=iteration,
                                        residual=residual))
            except StopIteration:
                message = f"stopped by the callback at iteration {iteration}"
                break
        if success:
            break
        if iteration % window == 0:
            window_sum[:] = 0.0
    if not message:
        if tol > 0:
            message = f"reached maxiter={maxiter} before the loss reached a plateau"
        else:   # no plateau test was asked for: the run is the requested budget
            success, message = True, f"completed the requested {maxiter} steps"
    on_plateau = success and tol > 0
    if n_tail and not (on_plateau and n_tail < window):
        x = tail / n_tail
        message += f"; returned the average of the last {n_tail} iterates"
    elif on_plateau:
        # Stopped on a plateau: the window's iterates are all on it (the test compared
        # this window with the previous one), and their mean has the noise of the window's
        # gradients averaged, not that of the last step's.
        x = window_sum / window
        message += f"; returned the mean of the last {window} iterates (the plateau's)"
    return OptimizeResult(x=x, fun=loss, jac=grad, nit=iteration, nfev=nfev,
                          success=success, message=message, residual=residual,
                          history=history, thread_choices=chooser.choices)
