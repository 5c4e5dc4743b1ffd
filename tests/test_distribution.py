"""The frozen grid Gaussian against dense NumPy, and the package's import graph."""

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest

from sparsegauss import GridGaussian, NotPositiveDefiniteError
from sparsegauss.distribution import GridGaussianDistribution
from sparsegauss.grid import GridParameterization
from conftest import dense_precision, random_spd_theta

PACKAGE = Path(__file__).resolve().parents[1] / "sparsegauss"


@pytest.fixture
def frozen(rng):
    grid = GridParameterization((4, 5), 8)
    theta = random_spd_theta(grid, rng, margin=0.3)
    return GridGaussianDistribution(grid, theta, mean=rng.normal(size=20)), dense_precision(grid, theta)


def test_density_and_log_partition_match_dense(frozen, rng):
    p, dense = frozen
    X = rng.normal(size=(6, 20))
    centred = X - p.mean
    log_z = 10 * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(dense)[1]
    np.testing.assert_allclose(p.log_partition, log_z, rtol=1e-12)
    np.testing.assert_allclose(p.score_samples(X),
                               -0.5 * np.einsum("ni,ij,nj->n", centred, dense, centred) - log_z,
                               rtol=1e-12)


def test_whitening_is_exact_and_invertible(frozen, rng):
    """z = Lᵀ P (x − μ): zᵀz is the Mahalanobis form, the map's Jacobian J satisfies
    JᵀJ = Λ (so Cov z = J Σ Jᵀ = I exactly), log|det J| = ½ log det Λ; unwhiten inverts."""
    p, dense = frozen
    X = rng.normal(size=(5, 20))
    Z = p.whiten(X)
    centred = X - p.mean
    np.testing.assert_allclose(np.sum(Z ** 2, 1),
                               np.einsum("ni,ij,nj->n", centred, dense, centred), rtol=1e-10)
    jacobian = p.whiten(np.eye(20) + p.mean).T         # column j = J e_j
    np.testing.assert_allclose(jacobian.T @ jacobian, dense, atol=1e-12)
    np.testing.assert_allclose(jacobian @ np.linalg.inv(dense) @ jacobian.T, np.eye(20),
                               atol=1e-10)
    np.testing.assert_allclose(np.linalg.slogdet(jacobian)[1], 0.5 * p.logdet_precision,
                               rtol=1e-12)
    np.testing.assert_allclose(p.unwhiten(Z), X, atol=1e-12)
    samples = p.whiten(p.sample(50_000, random_state=0))
    np.testing.assert_allclose(np.cov(samples.T), np.eye(20), atol=0.03)


def test_frozen_distribution_pickles_and_refuses_indefinite(frozen):
    p, _ = frozen
    copy = pickle.loads(pickle.dumps(p))
    np.testing.assert_allclose(copy.score_samples(p.mean[None]), p.score_samples(p.mean[None]))
    bad = GridGaussianDistribution(p.grid, -p.theta)
    assert bad.is_positive_definite is False
    for call in (lambda: bad.log_partition, lambda: bad.sample(1), lambda: bad.whiten(p.mean[None])):
        with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
            call()


def test_estimator_exposes_its_fitted_distribution(rng):
    X = rng.normal(size=(200, 12))
    model = GridGaussian((3, 4)).fit(X)
    p = model.distribution_
    assert isinstance(p, GridGaussianDistribution)
    np.testing.assert_array_equal(p.theta, model.theta_)
    np.testing.assert_allclose(p.score_samples(X), model.score_samples(X))
    assert np.isclose(p.log_partition, model.log_partition_)


def _imports(path):
    """Package modules a module imports, at top level or inside functions."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found.update(names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sparsegauss"):
            found.add(node.module)
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).replace(
        ".__init__", "") for p in PACKAGE.rglob("*.py")}
    return module, {m for m in found if m in modules and m != module}


def test_no_module_imports_one_that_imports_it_back():
    """The import graph of the package (lazy imports included) has no cycle, apart from
    a package's ``__init__`` re-exporting its own modules."""
    graph = dict(_imports(path) for path in PACKAGE.rglob("*.py"))
    for module in graph:
        graph[module] = {m for m in graph[module]
                         if not (module.startswith(m + ".") or m.startswith(module + "."))}
    # Depth-first search for a back edge.
    state, cycle = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle.append(trail + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycle, f"import cycles: {cycle}"


@pytest.mark.parametrize("shape", [(9, 7), (70, 70)])     # our solve; CHOLMOD's (> 4096 px)
def test_sample_and_score_gives_the_samples_and_their_log_densities(shape, rng):
    """sample_and_score: the samples of sample() for the same seed, and log-densities
    from εᵀε equal to score_samples of those samples (a pass over them), with a mean."""
    grid = GridParameterization(shape, 8)
    mean = rng.normal(size=grid.n_pixels)
    p = GridGaussianDistribution(grid, random_spd_theta(grid, rng), mean)
    samples, log_density = p.sample_and_score(37, random_state=5)
    np.testing.assert_array_equal(samples, p.sample(37, random_state=5))
    np.testing.assert_allclose(log_density, p.score_samples(samples), rtol=1e-11)
    out = np.empty((37, grid.n_pixels))
    assert p.sample_and_score(37, random_state=5, out=out)[0] is out


def test_draw_noise_scores_grid_noise_from_its_normals(rng):
    """NCE's draw of a grid noise takes the log-densities that come with the samples
    (float64), and scores the stored samples itself otherwise (float32: the rounded
    samples' own densities); a sample_and_score that breaks its contract is named."""
    from sparsegauss.estimators._driver import draw_noise
    from sparsegauss.noise import GridNoise

    grid = GridParameterization((6, 5), 4)
    noise = GridNoise(GridGaussianDistribution(grid, random_spd_theta(grid, rng)))
    samples, log_density = draw_noise(noise, 11, grid.n_pixels, np.random.default_rng(3))
    np.testing.assert_allclose(log_density, noise.score_samples(samples), rtol=1e-11)
    single, log_single = draw_noise(noise, 11, grid.n_pixels, np.random.default_rng(3),
                                    np.float32)
    assert single.dtype == np.float32
    np.testing.assert_allclose(log_single, noise.score_samples(single), rtol=1e-12)

    class Broken(GridNoise):
        def sample_and_score(self, n_samples, random_state=None, out=None):
            return np.zeros((n_samples, grid.n_pixels)), np.zeros(n_samples)

    with pytest.raises(ValueError, match="must return the array it was given"):
        draw_noise(Broken(noise.distribution), 4, grid.n_pixels, np.random.default_rng(0))
