"""The interface every estimator of an unnormalized model is written against.

An *energy model* is a family of unnormalized log-densities ``f_θ(x)`` on ``ℝᴰ`` with a
flat parameter vector ``θ ∈ ℝᵖ``; ``p_θ(x) = exp f_θ(x) / Z(θ)``. The estimators of
:mod:`sparsegauss.estimators` (NCE, ranking NCE, conditional NCE, score matching, CD)
need only the pieces below, and each piece is a whole-batch array operation, so that a
model implements it with a few matrix products or one compiled kernel and never with a
Python loop over samples:

========================  ==========================================  ==================
method                    value                                       used by
========================  ==========================================  ==================
``log_density``           ``f_θ(x_n)`` for every row                  all
``log_density_grad``      ``Σ_n w_n ∇_θ f_θ(x_n)`` (no n × p array)    NCE, RNCE, CNCE, CD
``log_density_vjp``       both on the same rows, one forward pass      NCE, RNCE, CNCE, CD
``logistic_terms``        two classes' loss, ``Σ w ∇_θ f``, ``Σ w``   NCE
``score``                 ``ψ_θ(x_n) = ∇_x f_θ(x_n)``                  score matching
``laplacian``             ``Δf_θ(x_n) = Σ_i ∂²f_θ/∂x_i²``              score matching
``laplacian_grad``        ``Σ_n w_n ∇_θ Δf_θ(x_n)``                    score matching
``score_vjp``             ``Σ_n Σ_i V_ni ∇_θ ψ_θ,i(x_n)``              score matching
``laplacian_vjp``         ``Δf`` and its gradient function, one pass   score matching
``score_and_vjp``         ``ψ`` and its vjp function, one pass        score matching
``log_partition``         exact ``log Z(θ)`` and ``∇_θ log Z``         NCE (exact), CD
``likelihood_terms``      ``log Z − mean f`` and its gradient         CD (expectation),
                                                                      adaptive noise
``mean_log_density_and_   ``mean f`` and ``mean ∇_θ f`` (by default    CD
grad``                    from the two above)
``sample``                exact samples of ``p_θ``                     CD (exact sampler)
``mcmc``                  a Markov chain that leaves ``p_θ`` invariant CD
``mcmc_vjp``              ``mcmc`` and ``log_density_vjp`` at both     CD
                          ends of the chains
========================  ==========================================  ==================

The last three are optional (``has_log_partition``, ``has_exact_sampler`` say whether a
model has them). Score matching's objective and gradient,

    J(θ) = (1/n) Σ_n [Δf_θ(x_n) + ½ ‖ψ_θ(x_n)‖²],
    ∇J   = (1/n) Σ_n ∇_θ Δf_θ(x_n) + (1/n) Σ_n Σ_i ψ_i(x_n) ∇_θ ψ_i(x_n),

are therefore ``laplacian_grad(θ, X, 1/n)`` plus ``score_vjp(θ, X, ψ/n)``: the model never
builds a per-sample Jacobian or Hessian.
"""

import abc

import numpy as np
from scipy.special import expit

__all__ = ["EnergyModel", "FrozenModel"]


class EnergyModel(abc.ABC):
    """Abstract unnormalized model ``f_θ(x)`` (see the module docstring).

    Attributes
    ----------
    n_params : int
        Length of θ.
    n_features : int
        Dimension D of x.
    """

    n_params: int
    n_features: int
    #: Whether :meth:`log_partition` is available (exact and affordable).
    has_log_partition = False
    #: Whether ``f_θ(x) = θ · t(x)`` (linear in θ, as for natural parameters): then
    #: ``f_θ(x) = θ · ∇_θ f_θ(x)``, and a mean of f comes with its gradient, without a
    #: pass of its own over the rows.
    linear_in_params = False
    #: Whether :meth:`sample` draws exact samples.
    has_exact_sampler = False

    @abc.abstractmethod
    def log_density(self, theta, X):
        """Unnormalized log-density ``f_θ(x_n)`` of every row, shape (n,)."""

    @abc.abstractmethod
    def log_density_grad(self, theta, X, weights):
        """``Σ_n w_n ∇_θ f_θ(x_n)``, shape (n_params,)."""

    def minibatch(self, X, rows):
        """The rows ``rows`` of the data ``X`` in the form this model's methods take: a
        gathered copy ``X[rows]`` by default. The estimators ask for every minibatch
        through here, so that a model whose data passes can read selected rows in place
        (the grid Gaussian: :class:`~sparsegauss.stats.RowSelection`) skips the copy."""
        return X[rows]

    def log_density_vjp(self, theta, X):
        """``f_θ(x_n)`` for every row and the function ``w ↦ Σ_n w_n ∇_θ f_θ(x_n)`` on the
        same rows. Estimators whose weights depend on the values (NCE's ``h``, CD's
        signs) call this, so that a model can reuse its forward pass (a DEM's hidden
        activations) for the gradient; by default it calls the two methods above."""
        return (self.log_density(theta, X),
                lambda weights: self.log_density_grad(theta, X, weights))

    def logistic_terms(self, theta, X, x_offsets, Y, y_offsets):
        """NCE's logistic classifier of the rows of X (label +1) against those of Y
        (label −1), on ``a_n = f_θ(u_n) − offsets_n``.

        Returns ``Σ_n ℓ_n`` with ``ℓ_n = softplus(−y_n a_n)`` (``y_n`` the row's label),
        ``Σ_n w_n ∇_θ f_θ(u_n)`` and ``Σ_n w_n`` with ``w_n = ∂ℓ_n/∂a_n = −y_n σ(−y_n a_n)``,
        each summed over both classes. By default class by class from
        :meth:`log_density_vjp`; a model can compute all three in one pass over the rows
        of both (the grid Gaussian does).
        """
        loss, grad, weight = 0.0, 0.0, 0.0
        for rows, offsets, label in ((X, x_offsets, 1.0), (Y, y_offsets, -1.0)):
            f, vjp = self.log_density_vjp(theta, rows)
            z = -label * (f - offsets)
            weights = -label * expit(z)
            loss += float(np.sum(np.logaddexp(0.0, z)))
            grad = grad + vjp(weights)
            weight += float(np.sum(weights))
        return loss, grad, weight

    def log_density_and_score(self, theta, X):
        """``f_θ(x_n)`` and ``∇_x f_θ(x_n)`` together (an MCMC step needs both)."""
        return self.log_density(theta, X), self.score(theta, X)

    def score(self, theta, X):
        """``∇_x f_θ(x_n)`` for every row, shape (n, D)."""
        raise NotImplementedError(f"{type(self).__name__} has no score (∇ₓ log p̃).")

    def laplacian(self, theta, X):
        """``Σ_i ∂²f_θ(x_n)/∂x_i²`` for every row, shape (n,)."""
        raise NotImplementedError(f"{type(self).__name__} has no Laplacian.")

    def laplacian_grad(self, theta, X, weights):
        """``Σ_n w_n ∇_θ Δf_θ(x_n)``, shape (n_params,)."""
        raise NotImplementedError(f"{type(self).__name__} has no Laplacian gradient.")

    def score_vjp(self, theta, X, V):
        """``Σ_n Σ_i V_ni ∇_θ ψ_θ,i(x_n)``, shape (n_params,), ``V`` of shape (n, D)."""
        raise NotImplementedError(f"{type(self).__name__} has no score Jacobian.")

    def laplacian_vjp(self, theta, X):
        """``Δf_θ(x_n)`` for every row and ``w ↦ Σ_n w_n ∇_θ Δf_θ(x_n)`` on the same rows
        (by default the two methods above; a model overrides it to share the work)."""
        return (self.laplacian(theta, X),
                lambda weights: self.laplacian_grad(theta, X, weights))

    def score_and_vjp(self, theta, X):
        """``ψ_θ(x_n)`` for every row and ``V ↦ Σ_n Σ_i V_ni ∇_θ ψ_θ,i(x_n)``."""
        return self.score(theta, X), lambda V: self.score_vjp(theta, X, V)

    def log_partition(self, theta):
        """Exact ``log Z(θ)`` and its gradient ``∇_θ log Z``."""
        raise NotImplementedError(f"{type(self).__name__} has no exact log Z.")

    def log_partition_value(self, theta):
        """Exact ``log Z(θ)`` alone (models may skip the gradient's cost)."""
        return self.log_partition(theta)[0]

    def likelihood_terms(self, theta, X):
        """The exact mean negative log-likelihood of the rows and its gradient,

            ℓ(θ) = log Z(θ) − (1/n) Σ_n f_θ(x_n),
            ∇ℓ(θ) = ∇_θ log Z − (1/n) Σ_n ∇_θ f_θ(x_n):

        a step of stochastic maximum likelihood with the model's exact expectation (CD's
        ``sampler="expectation"``, the first phase of NCE's adaptive noise). Needs
        :meth:`log_partition`. By default a pass over the rows, then
        :meth:`log_partition`; the two do not depend on each other, and a model may run
        them at once (the grid Gaussian does).
        """
        mean_f, mean_grad = self.mean_log_density_and_grad(theta, X)
        log_z, grad_log_z = self.log_partition(theta)
        return log_z - mean_f, grad_log_z - mean_grad

    def mean_log_density_and_grad(self, theta, X, terms=None):
        """``(1/n) Σ_n f_θ(x_n)`` and ``(1/n) Σ_n ∇_θ f_θ(x_n)``; ``terms``, when given,
        is :meth:`log_density_vjp`'s pair for the rows (already evaluated). A model
        linear in θ needs one pass, the gradient's: ``mean f = θ · mean ∇f``."""
        n_samples = X.shape[0]
        to_mean = np.full(n_samples, 1.0 / n_samples)
        if terms is None and self.linear_in_params:
            mean_grad = self.log_density_grad(theta, X, to_mean)
            return float(np.dot(theta, mean_grad)), mean_grad
        f, vjp = terms or self.log_density_vjp(theta, X)
        return float(np.mean(f)), vjp(to_mean)

    def sample(self, theta, n_samples, random_state=None):
        """``n_samples`` exact samples of ``p_θ``, shape (n_samples, D)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler.")

    def mcmc(self, theta, start, n_steps, random_state=None):
        """Run a ``p_θ``-invariant Markov chain ``n_steps`` steps from each row of ``start``."""
        raise NotImplementedError(f"{type(self).__name__} has no MCMC sampler.")

    def mcmc_vjp(self, theta, start, n_steps, random_state=None):
        """:meth:`mcmc` and what CD needs at both ends: ``(chains, (f(start),
        vjp(start)), (f(chains), vjp(chains)))``, the pairs as :meth:`log_density_vjp`
        returns them. By default two more evaluations; a model whose chains already
        evaluated both ends (the DEM's MALA) returns those."""
        chains = self.mcmc(theta, start, n_steps, random_state)
        return chains, self.log_density_vjp(theta, start), self.log_density_vjp(theta, chains)

    def frozen(self, theta):
        """The normalized distribution ``p_θ`` as an object with ``sample(n,
        random_state)`` and ``score_samples(X)`` (NCE's adaptive noise); needs the exact
        sampler and log Z. Models override it to keep a factorization between draws."""
        return FrozenModel(self, theta)

    def check_params(self, theta):
        """θ as a float64 vector of length ``n_params``, or ``ValueError``."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape ({self.n_params},) for "
                             f"{type(self).__name__}. Got shape {theta.shape} instead.")
        return theta


class FrozenModel:
    """An energy model frozen at θ as a normalized distribution (``sample``,
    ``score_samples``): the form NCE's noise takes. Needs the model's exact sampler and
    exact log Z."""

    def __init__(self, model, theta):
        if not (model.has_exact_sampler and model.has_log_partition):
            raise TypeError(f"{type(model).__name__} has no exact sampler or no exact log Z, "
                            "so a frozen copy of it cannot serve as NCE's noise.")
        self.model, self.theta = model, model.check_params(theta).copy()
        self.log_partition = model.log_partition_value(self.theta)

    def sample(self, n_samples, random_state=None):
        return self.model.sample(self.theta, n_samples, random_state)

    def score_samples(self, X):
        return self.model.log_density(self.theta, X) - self.log_partition
