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


@pytest.mark.parametrize("average", [0.25, 1.0])
def test_tail_average_is_the_mean_of_the_last_iterates(average):
    """``average`` returns the mean of the last ``average × maxiter`` iterates (seen by the
    callback); on a noisy quadratic at a constant rate that mean is closer to the minimum
    than the last iterate, by about the square root of the steps averaged."""
    target = np.array([1.0, -2.0, 0.5])

    def fun_from(seed):
        rng = np.random.default_rng(seed)
        return lambda x: (float(0.5 * np.sum((x - target) ** 2)),
                          x - target + 0.3 * rng.standard_normal(3))

    iterates = []
    averaged = minimize(fun_from(0), np.zeros(3), method="sgd", learning_rate=0.05,
                        maxiter=2000, tol=-np.inf, average=average,
                        callback=lambda r: iterates.append(r.x))
    n_tail = int(round(average * 2000))
    np.testing.assert_allclose(averaged.x, np.mean(iterates[-n_tail:], axis=0), rtol=1e-12)
    assert f"average of the last {n_tail} iterates" in averaged.message
    last = minimize(fun_from(0), np.zeros(3), method="sgd", learning_rate=0.05,
                    maxiter=2000, tol=-np.inf)
    np.testing.assert_array_equal(last.x, iterates[-1])       # same run, same noise
    assert np.linalg.norm(averaged.x - target) < 0.3 * np.linalg.norm(last.x - target)


def test_stochastic_plateau_stops_early():
    result = minimize(lambda x: (float(x @ x) + 1.0, 2 * x), np.ones(2), method="adam",
                      learning_rate=0.1, maxiter=5000, tol=1e-6, window=20)
    assert result.success and result.nit < 5000 and "stopped improving" in result.message


def test_plateau_stop_returns_the_mean_of_the_plateau_window():
    """A run stopped on a plateau returns the mean of its last window's iterates (seen by
    the callback); the loss reported stays the last iterate's. On a noisy quadratic at a
    constant rate η the iterates decorrelate in about 1/η = 5 steps, so the mean of 50
    has about a fifth of the last iterate's squared error (measured over 20 runs: 0.19).
    """
    target = np.array([1.0, -2.0, 0.5, 3.0])
    errors_mean, errors_last = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)

        def fun(x):
            return (float(0.5 * np.sum((x - target) ** 2)),
                    x - target + 0.3 * rng.standard_normal(4))

        iterates, losses = [], []

        def record(r):
            iterates.append(r.x)
            losses.append(r.fun)

        result = minimize(fun, np.zeros(4), method="sgd", momentum=0.0, learning_rate=0.2,
                          maxiter=5000, tol=1e-6, window=50, callback=record)
        assert result.success and result.nit < 5000 and result.nit % 50 == 0
        assert "mean of the last 50 iterates" in result.message
        np.testing.assert_allclose(result.x, np.mean(iterates[-50:], axis=0), rtol=1e-12)
        assert result.fun == losses[-1]
        errors_mean.append(np.sum((result.x - target) ** 2))
        errors_last.append(np.sum((iterates[-1] - target) ** 2))
    assert np.mean(errors_mean) < 0.4 * np.mean(errors_last)


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
    with pytest.raises(ValueError, match="'average'.*\\[0, 1\\]"):
        minimize(rosenbrock, [0.0, 0.0], method="adam", average=1.5)


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


def _outlying_spectrum(rng, n=30, n_outliers=5):
    """SPD ``H`` and a preconditioner ``M`` (SPD) that leaves a few large outliers in
    ``M H``, like the MLE's sandwich preconditioner on strongly correlated pixels."""
    basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eigenvalues = np.concatenate([np.linspace(1.0, 1.8, n - n_outliers),
                                  np.logspace(1, 3, n_outliers)])
    root, _ = np.linalg.qr(rng.normal(size=(n, n)))
    preconditioner = (root * rng.uniform(0.5, 2.0, n)) @ root.T
    # H = M^{-1/2} B diag(λ) Bᵀ M^{-1/2}: the eigenvalues of M H are exactly λ.
    values, vectors = np.linalg.eigh(preconditioner)
    inverse_root = (vectors / np.sqrt(values)) @ vectors.T
    hessian = inverse_root @ (basis * eigenvalues) @ basis.T @ inverse_root
    return 0.5 * (hessian + hessian.T), preconditioner, eigenvalues


def test_ritz_deflation_sends_the_largest_eigenvalues_to_one(rng):
    """Rayleigh–Ritz from one CG solve's record: the Ritz values are the eigenvalues of
    M H above 2 (dense oracle), and the corrected preconditioner maps them to 1 while
    staying positive definite."""
    from sparsegauss.optimize import _KrylovRecord, truncated_cg

    hessian, preconditioner, eigenvalues = _outlying_spectrum(rng)
    record = _KrylovRecord(200)
    grad = rng.normal(size=len(hessian))
    direction, stalled = truncated_cg(lambda v: hessian @ v, grad,
                                      lambda v: preconditioner @ v, 200, 1e-13, record=record)
    assert not stalled
    np.testing.assert_allclose(hessian @ direction, -grad, atol=1e-9 * np.abs(grad).max())
    ritz_vectors, coefficients = record.deflation()
    outliers = np.sort(eigenvalues[eigenvalues > 2])[::-1]
    np.testing.assert_allclose(1.0 / (1.0 + coefficients), outliers, rtol=1e-8)
    corrected = preconditioner + ritz_vectors.T @ (coefficients[:, None] * ritz_vectors)
    assert np.linalg.eigvalsh(0.5 * (corrected + corrected.T)).min() > 0
    spectrum = np.sort(np.linalg.eigvals(corrected @ hessian).real)
    expected = np.sort(np.where(eigenvalues > 2, 1.0, eigenvalues))
    np.testing.assert_allclose(spectrum, expected, rtol=1e-6)


def test_deflated_preconditioner_needs_fewer_cg_steps(rng):
    """A second system with the same Hessian: the recycled preconditioner's CG needs the
    iterations of the clustered spectrum only."""
    from sparsegauss.optimize import _deflated, _KrylovRecord, truncated_cg

    hessian, preconditioner, _ = _outlying_spectrum(rng)
    record = _KrylovRecord(200)
    truncated_cg(lambda v: hessian @ v, rng.normal(size=len(hessian)),
                 lambda v: preconditioner @ v, 200, 1e-10, record=record)
    counts = {}
    grad = rng.normal(size=len(hessian))
    for name, apply_m in [("bare", lambda v: preconditioner @ v),
                          ("deflated", _deflated(lambda v: preconditioner @ v,
                                                 [record.deflation()]))]:
        products = []
        direction, _ = truncated_cg(lambda v: products.append(1) or hessian @ v, grad,
                                    apply_m, 200, 1e-8)
        np.testing.assert_allclose(hessian @ direction, -grad, atol=1e-6)
        counts[name] = len(products)
    assert counts["deflated"] <= counts["bare"] - 4, counts


def test_cg_goes_on_after_an_indefinite_preconditioner(rng):
    """A preconditioner that is not positive definite is detected (rᵀ M r <= 0) and the
    solve continues from CG's iterate with a good one, to the same solution."""
    from sparsegauss.optimize import _IndefinitePreconditioner, truncated_cg

    hessian, preconditioner, _ = _outlying_spectrum(rng)
    grad = rng.normal(size=len(hessian))
    values, vectors = np.linalg.eigh(preconditioner)
    values[0] = -values[0]
    indefinite = (vectors * values) @ vectors.T
    with pytest.raises(_IndefinitePreconditioner) as failed:
        truncated_cg(lambda v: hessian @ v, grad, lambda v: indefinite @ v, 200, 1e-10)
    state = failed.value
    np.testing.assert_allclose(state.residual, -grad - hessian @ state.direction, atol=1e-8)
    direction, stalled = truncated_cg(lambda v: hessian @ v, grad,
                                      lambda v: preconditioner @ v, 200 - state.steps, 1e-10,
                                      start=(state.direction, state.residual))
    assert not stalled
    np.testing.assert_allclose(direction, np.linalg.solve(hessian, -grad), rtol=1e-6)


def test_adam_step_kernel_is_numpy_adam_to_the_bit():
    """The compiled Adam step gives NumPy's expressions' moments and step exactly, over
    gradients spanning sixteen orders of magnitude (the fits' results must not move)."""
    from sparsegauss import _kernels

    rng = np.random.default_rng(1)
    first, second = np.zeros(3001), np.zeros(3001)
    m, v = first.copy(), second.copy()
    beta1, beta2, rate = 0.9, 0.99, 0.03
    for t in range(1, 60):
        g = rng.normal(size=3001) * 10.0 ** rng.integers(-8, 8, size=3001)
        step = _kernels.adam_step(g, first, second, beta1, beta2, 1 - beta1 ** t,
                                  1 - beta2 ** t, rate)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        expected = -rate * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + 1e-8)
        np.testing.assert_array_equal(first, m)
        np.testing.assert_array_equal(second, v)
        np.testing.assert_array_equal(step, expected)


@pytest.fixture
def two_numba_threads():
    """Two Numba threads in use (the chooser's two counts are 2 and 1); skips on a
    machine with fewer."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a machine with two or more cores")
    numba.set_num_threads(2)


def test_thread_chooser_runs_the_faster_count_and_follows_a_change(two_numba_threads):
    """ThreadChooser runs the chosen count (all threads at first) but for the last
    steps of each period, which run on the other; a step that is slow on two threads
    (as beside a busy process) moves the loop to one; a probe that cannot win any more
    ends early; a choice that stands doubles the next period; when two become faster,
    the next probe goes back and the period resets; on exit the count in use is
    restored."""
    import time

    import numba

    from sparsegauss._threads import ThreadChooser

    slow_on = {"count": 2}
    seen = []

    def step():
        count = numba.get_num_threads()
        seen.append(count)
        time.sleep(0.02 if count == slow_on["count"] else 0.001)

    with ThreadChooser(period=10, probe_steps=3, max_period=20) as chooser:
        for _ in range(30):
            chooser.run(step)
        slow_on["count"] = 1
        for _ in range(40):
            chooser.run(step)
    assert numba.get_num_threads() == 2
    # Period 0–9 on two threads, its last 3 steps on one: one is faster.
    assert seen[:10] == [2] * 7 + [1] * 3
    # The choice changed: the next period has 10 steps again (10–19). Its probe on two
    # threads (17–19) has lost after its first counted step (18: 20 ms against 1 ms a
    # step), so the period ends there, one step early, and the choice stands.
    assert seen[10:19] == [1] * 7 + [2] * 2
    # So the next period doubles (19–38). At step 30 two threads became the faster
    # count, and the probe at 36–38 finds it.
    assert seen[19:39] == [1] * 17 + [2] * 3
    assert seen[39:48] == [2] * 7 + [1] * 2                 # a lost probe again
    assert seen[48:67] == [2] * 17 + [1] * 2                # stood: doubled
    assert chooser.choices == [(10, 1), (19, 1), (39, 2), (48, 2), (67, 2)]
    with pytest.raises(ValueError, match="shorter than half its period"):
        ThreadChooser(period=6, probe_steps=3)


def test_thread_chooser_backs_off_from_optimistic_probes_and_starts_where_the_last_ended(
        two_numba_threads):
    """Beside a busy process a probe on all threads after a stretch on one can be fast
    for its few steps and slow for the period after it. A switch to all threads that is
    undone after one period gives one thread twice the length it had, so such probes
    come at doubling intervals instead of every period; and the count a loop ends on
    is where the next loop (``start=last_choice()``, as the optimizer passes) begins."""
    import time

    import numba

    from sparsegauss._threads import ThreadChooser, last_choice

    run_on_two = {"steps": 0}
    seen = []

    def step():
        count = numba.get_num_threads()
        seen.append(count)
        if count == 1:
            run_on_two["steps"] = 0
            time.sleep(0.005)
        else:
            run_on_two["steps"] += 1
            time.sleep(0.001 if run_on_two["steps"] <= 3 else 0.02)

    with ThreadChooser(period=10, probe_steps=3, max_period=80) as chooser:
        for _ in range(110):
            chooser.run(step)
    # 0–9: two threads are slow after their third step, one wins (a switch to one
    # thread: the next period is the short one). 10–19: the probe on two (17–19) is
    # fast, so two are chosen; 20–29 on two are slow, and one thread comes back for
    # twice its period (30–49), then 40 steps (60–99) after the next such round.
    assert chooser.choices == [(10, 1), (20, 2), (30, 1), (50, 2), (60, 1), (100, 2),
                               (110, 1)]
    assert seen[30:47] == [1] * 17 and seen[60:97] == [1] * 37
    assert last_choice() == 1 and numba.get_num_threads() == 2
    with ThreadChooser(period=10, probe_steps=3, start=last_choice()) as chooser:
        for _ in range(10):
            chooser.run(step)
    assert seen[110:117] == [1] * 7 and seen[117:120] == [2] * 3


def test_stochastic_fits_do_not_depend_on_the_thread_count(rng, monkeypatch):
    """The passes split their work by the process's thread limit, not the count in use,
    so that ThreadChooser's switches change no number: NCE at its defaults (data passes,
    noise draws, the first phase's factorization beside the moments) on one Numba
    thread, on two, and switching between them at every step gives the same estimate to
    the bit."""
    import warnings

    import numba

    from sparsegauss import GridGaussian, optimize
    from sparsegauss._threads import ThreadChooser

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a machine with two or more cores")

    class Alternating(ThreadChooser):
        def run(self, function, *args):
            self._step += 1
            numba.set_num_threads(1 + self._step % 2)
            return function(*args)

    X = rng.normal(size=(3000, 36)) @ np.triu(np.ones((36, 36))) / 6.0

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return GridGaussian((6, 6), method="nce", max_iter=200,
                                random_state=0).fit(X).theta_

    estimates = []
    try:
        for count in (1, 2):
            numba.set_num_threads(count)
            estimates.append(fit())
        monkeypatch.setattr(optimize, "ThreadChooser", Alternating)
        estimates.append(fit())
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(estimates[0], estimates[1])
    np.testing.assert_array_equal(estimates[0], estimates[2])
