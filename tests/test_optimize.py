import numpy as np
import pytest

from sparsegauss.exceptions import NotPositiveDefiniteError, SparseGaussError
from sparsegauss.optimize import minimize

METHODS = ["lbfgs", "newton-cg"]


def rosenbrock(x):
    a, b = x
    loss = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    grad = np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
    return loss, grad


@pytest.mark.parametrize("method", METHODS)
def test_rosenbrock(method):
    result = minimize(rosenbrock, [-1.2, 1.0], method=method, tol=1e-8, maxiter=500)
    assert result.success, result.message
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-6)
    assert [h["iteration"] for h in result.history] == list(range(result.nit + 1))


@pytest.mark.parametrize("method", METHODS)
def test_ill_conditioned_quadratic_with_preconditioner(method, rng):
    scales = np.logspace(-4, 4, 50)
    target = rng.normal(size=50)

    def fun(x):
        return 0.5 * np.sum(scales * (x - target) ** 2), scales * (x - target)

    result = minimize(fun, np.zeros(50), method=method, tol=1e-10, maxiter=50,
                      precondition=lambda x: (lambda v: v / scales))
    assert result.success and result.nit <= 3
    np.testing.assert_allclose(result.x, target, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_iterates_never_leave_the_domain(method):
    """-log(1 - x²) style barrier: fun raises outside (-1, 1); the minimum sits near the edge."""
    seen = []

    def fun(x):
        seen.append(x.copy())
        if np.any(np.abs(x) >= 1):
            raise NotPositiveDefiniteError("outside")
        return float(np.sum(-np.log(1 - x ** 2) - 3 * x)), -(-2 * x / (1 - x ** 2)) - 3

    result = minimize(fun, np.zeros(3), method=method, tol=1e-9, maxiter=200)
    assert result.success
    assert np.all(np.abs(result.x) < 1)
    np.testing.assert_allclose(result.x, (-2 + np.sqrt(4 + 36)) / 6, rtol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_loss_names_the_iteration(method):
    def fun(x):
        if x[0] > 0.5:
            return np.nan, np.full_like(x, np.nan)
        return float(-x[0]), -np.ones_like(x)

    with pytest.raises(SparseGaussError, match="non-finite at iteration 1"):
        minimize(fun, np.zeros(1), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_callback_can_stop_the_run(method):
    def stop(state):
        if state.nit == 2:
            raise StopIteration

    result = minimize(rosenbrock, [-1.2, 1.0], method=method, callback=stop)
    assert result.nit == 2 and not result.success and "callback" in result.message


def test_start_outside_the_domain_is_an_error():
    def fun(x):
        raise NotPositiveDefiniteError("bad start")

    with pytest.raises(SparseGaussError, match="starting point"):
        minimize(fun, np.zeros(2))


def test_unknown_method():
    with pytest.raises(ValueError, match="'method' parameter"):
        minimize(rosenbrock, [0.0, 0.0], method="bfgs")


def test_maxiter_is_reported():
    result = minimize(rosenbrock, [-1.2, 1.0], method="lbfgs", maxiter=3)
    assert not result.success and "maxiter=3" in result.message


@pytest.mark.parametrize("method", ["adam", "sgd", "rmsprop"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "inverse-sqrt"])
def test_stochastic_methods_on_a_noisy_quadratic(method, schedule):
    """Minibatch-style noise on the gradient: the iterate settles near the minimum."""
    rng = np.random.default_rng(0)
    target = np.array([1.0, -2.0, 0.5])

    def fun(x):
        noise = 0.01 * rng.standard_normal(3)
        return float(0.5 * np.sum((x - target) ** 2)), x - target + noise

    rate = {"adam": 0.05, "sgd": 0.05, "rmsprop": 0.02}[method]
    result = minimize(fun, np.zeros(3), method=method, learning_rate=rate, maxiter=1500,
                      schedule=schedule, tol=-np.inf)
    np.testing.assert_allclose(result.x, target, atol=0.05)
    assert result.nit == 1500 and len(result.history) == 1501


def test_stochastic_plateau_stops_early():
    result = minimize(lambda x: (float(x @ x) + 1.0, 2 * x), np.ones(2), method="adam",
                      learning_rate=0.1, maxiter=5000, tol=1e-6, window=20)
    assert result.success and result.nit < 5000 and "stopped improving" in result.message


def test_stochastic_step_outside_the_domain_is_halved():
    def fun(x):
        if np.any(np.abs(x) >= 1):
            raise NotPositiveDefiniteError("outside")
        return float(-np.sum(x)), -np.ones_like(x)

    result = minimize(fun, np.zeros(2), method="sgd", learning_rate=0.5, maxiter=50, tol=-np.inf)
    assert np.all(np.abs(result.x) < 1) and np.all(result.x > 0.9)


def test_scipy_lbfgs_reports_history_and_converges():
    result = minimize(rosenbrock, [-1.2, 1.0], method="scipy-lbfgs", tol=1e-8, maxiter=500)
    assert result.success
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-6)
    assert result.history[-1]["iteration"] == result.nit


def test_bad_schedule_and_rate():
    with pytest.raises(ValueError, match="schedule"):
        minimize(rosenbrock, [0.0, 0.0], method="adam", schedule="linear")
    with pytest.raises(ValueError, match="learning_rate"):
        minimize(rosenbrock, [0.0, 0.0], method="sgd", learning_rate=0)


def test_newton_cg_hessian_products_stay_inside_the_domain():
    """A barrier near its boundary: the default finite-difference step of the Hessian
    product once left the domain and ended the fit with NotPositiveDefiniteError."""
    from sparsegauss.optimize import _forward_difference_hessp

    def fun(x):
        if np.any(x <= 0):
            raise NotPositiveDefiniteError("outside")
        return float(np.sum(1e-9 * x - np.log(x))), 1e-9 - 1.0 / x

    class Run:                      # the state a Newton-CG run holds at its iterate
        def __init__(self, x):
            self.x, (self.loss, self.grad), self.nfev = x, fun(x), 0

        def evaluate(self, x):
            self.nfev += 1
            return fun(x)

    x = np.array([1e-9, 1e3])       # 1e-9 from the boundary; ‖x‖ makes ε ≈ 1.5e-5
    vector = np.array([-1.0, 0.5])  # towards the boundary: the default step leaves
    product = _forward_difference_hessp(Run(x))(x, vector)
    # The step shrinks to ~1e-12 to stay inside: exact to 0.1 % where the curvature is
    # large, to rounding (1e-16 · |g| / ε ≈ 1e-7) where it is small.
    np.testing.assert_allclose(product[0], -1.0 / x[0] ** 2, rtol=1e-2)
    np.testing.assert_allclose(product[1], 0.5 / x[1] ** 2, atol=1e-7)
    # And a whole Newton-CG run on the same barrier converges.
    result = minimize(fun, np.array([1e-9, 1e3]), method="newton-cg", tol=1e-15, maxiter=200)
    assert result.success
    np.testing.assert_allclose(result.x, 1e9, rtol=1e-5)


def test_newton_cg_switches_to_the_exact_hessian_when_cg_stalls(rng):
    """An ill-conditioned quadratic whose CG solve cannot finish in ``max_cg`` products:
    without the Hessian the run crawls; with it, the direct steps finish the job."""
    eigenvalues = np.logspace(0, 6, 40)
    basis, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    matrix = (basis * eigenvalues) @ basis.T
    target = rng.normal(size=40)

    def fun(x):
        gap = x - target
        return 0.5 * gap @ matrix @ gap, matrix @ gap

    crawl = minimize(fun, np.zeros(40), method="newton-cg", tol=1e-8, maxiter=20, max_cg=3)
    assert not crawl.success and crawl.n_direct_steps == 0
    calls = []
    direct = minimize(fun, np.zeros(40), method="newton-cg", tol=1e-8, maxiter=20, max_cg=3,
                      hessian=lambda x: calls.append(1) or matrix.copy())
    assert direct.success and direct.n_direct_steps == len(calls) >= 1
    np.testing.assert_allclose(direct.x, target, rtol=1e-6)
    # A Hessian callable that declines (returns None) leaves the truncated steps.
    declined = minimize(fun, np.zeros(40), method="newton-cg", tol=1e-8, maxiter=20,
                        max_cg=3, hessian=lambda x: None)
    assert declined.n_direct_steps == 0
