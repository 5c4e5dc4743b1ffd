"""Two small energy models in plain NumPy, written only against the EnergyModel interface.

They prove that nothing in the estimators is Gaussian-specific: the estimators' modules
never see a grid, a stencil or a Cholesky factor.
"""

import numpy as np
from scipy.special import expit, logsumexp

from sparsegauss.models import EnergyModel

LOG_2PI = np.log(2 * np.pi)


class DiagonalGaussianEnergy(EnergyModel):
    """``f(x) = −½ Σ_i exp(θ_i) x_i²``: a diagonal Gaussian with log-precisions θ."""

    has_log_partition = True
    has_exact_sampler = True

    def __init__(self, n_features):
        self.n_features = self.n_params = n_features

    def log_density(self, theta, X):
        return -0.5 * (X ** 2) @ np.exp(theta)

    def log_density_grad(self, theta, X, weights):
        return -0.5 * np.exp(theta) * (weights @ X ** 2)

    def score(self, theta, X):
        return -X * np.exp(theta)

    def laplacian(self, theta, X):
        return np.full(len(X), -np.sum(np.exp(theta)))

    def laplacian_grad(self, theta, X, weights):
        return -np.sum(weights) * np.exp(theta)

    def score_vjp(self, theta, X, V):
        return -np.exp(theta) * np.sum(V * X, axis=0)

    def log_partition(self, theta):
        return 0.5 * np.sum(LOG_2PI - theta), -0.5 * np.ones_like(theta)

    def sample(self, theta, n_samples, random_state=None):
        rng = np.random.default_rng(random_state)
        return rng.standard_normal((n_samples, self.n_features)) * np.exp(-0.5 * theta)

    def mcmc(self, theta, start, n_steps, random_state=None):
        return self.sample(theta, len(start), random_state)     # an exact, trivial chain


class SoftplusGaussianEnergy(EnergyModel):
    """``f(x) = −½ a ‖x‖² + S(wᵀx + c)``, θ = (log a, w, c), ``S(u) = log(1 + eᵘ)``.

    Not a Gaussian, but ``exp f = e^{−a‖x‖²/2} (1 + e^{wᵀx + c})`` is a two-component
    Gaussian mixture, so log Z and exact samples are known in closed form:
    ``Z = (2π/a)^{D/2} (1 + exp(c + ‖w‖²/(2a)))``, components ``N(0, I/a)`` and
    ``N(w/a, I/a)`` with weights ∝ 1 and ``exp(c + ‖w‖²/(2a))``.
    """

    has_log_partition = True
    has_exact_sampler = True

    def __init__(self, n_features):
        self.n_features = n_features
        self.n_params = n_features + 2

    @staticmethod
    def _split(theta):
        return np.exp(theta[0]), theta[1:-1], theta[-1]

    def log_density(self, theta, X):
        a, w, c = self._split(theta)
        return -0.5 * a * np.sum(X ** 2, axis=1) + np.logaddexp(0.0, X @ w + c)

    def log_density_grad(self, theta, X, weights):
        a, w, c = self._split(theta)
        s = expit(X @ w + c) * weights
        return np.concatenate([[-0.5 * a * (weights @ np.sum(X ** 2, axis=1))], s @ X,
                               [np.sum(s)]])

    def score(self, theta, X):
        a, w, c = self._split(theta)
        return -a * X + np.outer(expit(X @ w + c), w)

    def laplacian(self, theta, X):
        a, w, c = self._split(theta)
        s = expit(X @ w + c)
        return -a * self.n_features + s * (1 - s) * (w @ w)

    def laplacian_grad(self, theta, X, weights):
        a, w, c = self._split(theta)
        s = expit(X @ w + c)
        d = s * (1 - s)
        dd = d * (1 - 2 * s)                     # derivative of s(1 − s) in u
        ww = w @ w
        return np.concatenate([[-a * self.n_features * np.sum(weights)],
                               2 * np.sum(weights * d) * w + ww * ((weights * dd) @ X),
                               [ww * np.sum(weights * dd)]])

    def score_vjp(self, theta, X, V):
        a, w, c = self._split(theta)
        s = expit(X @ w + c)
        d = s * (1 - s)
        vw = V @ w
        return np.concatenate([[-a * np.sum(V * X)], s @ V + (d * vw) @ X, [np.sum(d * vw)]])

    def _log_weights(self, theta):
        a, w, c = self._split(theta)
        return np.array([0.0, c + 0.5 * (w @ w) / a])

    def log_partition(self, theta):
        a, w, c = self._split(theta)
        log_weights = self._log_weights(theta)
        value = 0.5 * self.n_features * (LOG_2PI - theta[0]) + logsumexp(log_weights)
        r = expit(log_weights[1])              # the second component's weight
        grad = np.concatenate([[-0.5 * self.n_features - r * 0.5 * (w @ w) / a],
                               r * w / a, [r]])
        return value, grad

    def sample(self, theta, n_samples, random_state=None):
        rng = np.random.default_rng(random_state)
        a, w, c = self._split(theta)
        second = rng.random(n_samples) < expit(self._log_weights(theta)[1])
        return (rng.standard_normal((n_samples, self.n_features)) / np.sqrt(a)
                + np.outer(second, w / a))

    def mcmc(self, theta, start, n_steps, random_state=None):
        """Metropolis-adjusted Langevin steps (step size 0.5/a)."""
        rng = np.random.default_rng(random_state)
        a = np.exp(theta[0])
        step = 0.5 / a
        x = np.array(start, dtype=float)
        for _ in range(n_steps):
            grad_x = self.score(theta, x)
            proposal = x + step * grad_x + np.sqrt(2 * step) * rng.standard_normal(x.shape)
            grad_p = self.score(theta, proposal)
            log_q_forward = -np.sum((proposal - x - step * grad_x) ** 2, 1) / (4 * step)
            log_q_back = -np.sum((x - proposal - step * grad_p) ** 2, 1) / (4 * step)
            log_accept = (self.log_density(theta, proposal) - self.log_density(theta, x)
                          + log_q_back - log_q_forward)
            accept = np.log(rng.random(len(x))) < log_accept
            x[accept] = proposal[accept]
        return x
