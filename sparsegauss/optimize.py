"""Optimizers behind one ``minimize`` interface.

``minimize(fun, x0, *, method, tol, maxiter, callback, convergence)`` follows
``scipy.optimize.minimize``: ``fun(x)`` returns ``(loss, gradient)``; the result is a
:class:`scipy.optimize.OptimizeResult` with ``x, fun, jac, nit, nfev, success, message``
and ``history`` (one dict per iteration: ``iteration, loss, time, residual``);
``callback(intermediate_result)`` may raise ``StopIteration`` to stop early.

``"lbfgs"`` is a limited-memory BFGS with a backtracking line search that treats a
:class:`~sparsegauss.exceptions.NotPositiveDefiniteError` raised by ``fun`` as "step too
long": it halves the step and tries again, so iterates never leave the domain (the
positive-definite cone for likelihoods that need ``log det Λ``). SciPy's L-BFGS-B cannot
do that: a non-finite value aborts its line search.
"""

import time
from collections import deque

import numpy as np
from scipy.optimize import OptimizeResult

from .exceptions import NotPositiveDefiniteError, SparseGaussError

__all__ = ["minimize", "METHODS"]

METHODS = ("lbfgs",)

# Armijo's sufficient-decrease constant; the usual value (Nocedal & Wright, §3.1).
_ARMIJO = 1e-4
_MAX_BACKTRACKS = 60
_HZ_DELTA = 0.1
_LOSS_RESOLUTION = 1e-10


def minimize(fun, x0, *, method="lbfgs", tol=1e-8, maxiter=500, callback=None,
             convergence=None, memory=10, precondition=None):
    """Minimize ``fun`` from ``x0``.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (loss, gradient)``; may raise ``NotPositiveDefiniteError`` where the
        objective is undefined.
    x0 : ndarray, shape (n,)
    method : {"lbfgs"}, default="lbfgs"
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
        inverse Hessian at ``x`` to a vector; used as L-BFGS's initial matrix ``H₀``.

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
    return _lbfgs(fun, np.array(x0, dtype=np.float64), tol, int(maxiter), callback,
                  convergence, int(memory), precondition)


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
    for s, y, rho in reversed(pairs):
        alpha = rho * (s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if precondition is not None:
        q = precondition(q)
    elif pairs:
        s, y, _ = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - rho * (y @ q)) * s
    return -q


def _lbfgs(fun, x, tol, maxiter, callback, convergence, memory, precondition):
    start = time.perf_counter()
    try:
        loss, grad = _checked(fun, x, 0)
    except NotPositiveDefiniteError as exc:
        raise SparseGaussError(f"The starting point is outside the objective's domain: "
                               f"{exc}") from exc
    nfev = 1
    pairs = deque(maxlen=memory)
    residual = convergence(x, loss, grad)
    history = [dict(iteration=0, loss=loss, time=0.0, residual=residual)]
    success, message, iteration = residual <= tol, "converged", 0
    while not success and iteration < maxiter:
        iteration += 1
        direction = _two_loop(grad, pairs, precondition and precondition(x))
        slope = grad @ direction
        if slope >= 0:                       # not a descent direction: restart
            pairs.clear()
            direction, slope = -grad, -(grad @ grad)
        # Without curvature information, take a first step of unit length in max-norm.
        step = 1.0 if (pairs or precondition) else min(1.0, 1.0 / max(np.max(np.abs(grad)), 1e-300))
        for _ in range(_MAX_BACKTRACKS):
            trial = x + step * direction
            try:
                new_loss, new_grad = _checked(fun, trial, iteration)
            except NotPositiveDefiniteError:
                nfev += 1
                step *= 0.5
                continue
            nfev += 1
            if new_loss <= loss + _ARMIJO * step * slope:
                break
            # Near the optimum the loss cannot resolve the decrease (it is below its
            # rounding error); accept on the slope instead: Hager & Zhang's (2005)
            # approximate Wolfe condition, φ'(α) ≤ (2δ − 1) φ'(0), with δ = 0.1.
            if (abs(new_loss - loss) <= _LOSS_RESOLUTION * abs(loss)
                    and new_grad @ direction <= (2 * _HZ_DELTA - 1) * slope):
                break
            # Minimizer of the quadratic through loss, slope and new_loss, kept in
            # [0.1, 0.5] of the current step so backtracking always makes progress.
            curvature = new_loss - loss - slope * step
            guess = -slope * step * step / (2.0 * curvature) if curvature > 0 else 0.5 * step
            step = min(max(guess, 0.1 * step), 0.5 * step)
        else:
            message = (f"line search failed at iteration {iteration}: no step along the "
                       "search direction decreased the loss (the tolerance may be below "
                       "what floating point can resolve)")
            break
        s, y = trial - x, new_grad - grad
        sy = s @ y
        if sy > 1e-12 * np.sqrt((s @ s) * (y @ y)):   # keep the inverse Hessian SPD
            pairs.append((s, y, 1.0 / sy))
        x, loss, grad = trial, new_loss, new_grad
        residual = convergence(x, loss, grad)
        history.append(dict(iteration=iteration, loss=loss,
                            time=time.perf_counter() - start, residual=residual))
        success = residual <= tol
        if callback is not None:
            try:
                callback(OptimizeResult(x=x, fun=loss, jac=grad, nit=iteration,
                                        residual=residual))
            except StopIteration:
                message = f"stopped by the callback at iteration {iteration}"
                break
    if not success and message == "converged":
        message = f"reached maxiter={maxiter} with residual {residual:.3g} > tol={tol:g}"
    return OptimizeResult(x=x, fun=loss, jac=grad, nit=iteration, nfev=nfev,
                          success=bool(success), message=message, residual=residual,
                          history=history)
