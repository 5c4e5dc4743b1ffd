"""Contrastive divergence (Hinton 2002), for any energy model with an MCMC kernel.

The gradient of the negative mean log-likelihood is
``−E_data[∇_θ f] + E_model[∇_θ f]``; CD replaces the model expectation by an average
over *negative samples*:

    ∇(−ℓ) ≈ −(1/n) Σ_n ∇_θ f(x_n) + (1/m) Σ_j ∇_θ f(y_j).

Negative samples come from k steps (``cd_steps``) of the model's MCMC kernel started at
the data batch (CD-k), from persistent chains carried across steps (PCD, Tieleman 2008),
or exactly from the model's own sampler (the grid Gaussian's Cholesky factor). For the
grid Gaussian the kernel is a chromatic Gibbs sweep
(:func:`sparsegauss.models.grid_gaussian.gibbs_sample`).

``sampler="expectation"`` takes the limit of infinitely many exact negative samples: the
model expectation itself, ``E_θ[∇_θ f] = ∇_θ log Z(θ)``, from a model with an exact log Z
and its gradient (for the grid Gaussian ``−½ adjoint(m ⊙ Σ)`` by selected inversion).
The gradient's only noise is then the data minibatch's: stochastic-gradient maximum
likelihood. On a 28×28 grid it also costs less than a sample: the factorization, log Z
and its gradient took 0.7–1.3 ms where the factorization and 256 exact samples took
2.4–3.9 ms (MNIST's MLE, both stencils, medians of 200, four runs on 2026-12-01).
"""

from dataclasses import dataclass

import numpy as np

from ._driver import OptimizerOptions, run

__all__ = ["CD_BETAS", "CDOptions", "cd_gradient", "fit_cd"]

#: Adam's (β₁, β₂) for the grid Gaussian's stochastic maximum likelihood: CD at its
#: defaults (exact negative samples) and the first phase of NCE's, ranking NCE's and
#: CNCE's adaptive noise (CD with the exact expectation), by measurement (2026-12-02, one
#: fit each, ``GridGaussian(method=..., random_state=r)``). CD: With the usual β₂ = 0.999 one random stream in three to five sent
#: CD about 100× further from the MLE than the rest: on MNIST's 60,000 training images KL
#: 0.100 / 0.013 / 0.008 (random states 0–2, 4 neighbours) and 0.110 / 0.108 / 2.571, the
#: last not converged (8 neighbours); on the demo's 8,000 images 1.219 / 0.008 / 0.007
#: (4). With β₂ = 0.99, the same states: 0.008 / 0.008 / 0.009, 0.080 / 0.069 / 0.072,
#: and 0.007 for states 0–3 on the demo's images; on a 16×16 synthetic grid with 10⁵
#: samples the KL to the truth is unchanged (1.8–2.1× the MLE's, both stencils, states
#: 0–2). Every state's gradient spikes at steps 16–17, as the first estimates' exact
#: samples swing; a second-moment estimate that forgets in about 100 steps instead of
#: 1,000 stops those steps from damping the rest of the run. NCE at its defaults on
#: MNIST, 8 neighbours, random states 0–9: with β₂ = 0.999 in its first phase KL 0.17–0.90
#: (median 0.28) and held-out log-likelihood up to 1.05 nats/image below the MLE's (two
#: states of ten over 0.5), with 0.99 KL 0.10–0.33 (median 0.12), at most 0.42 below.
CD_BETAS = (0.9, 0.99)

#: CD's negative samples: the model's MCMC kernel, its exact sampler, or none (the exact
#: model expectation, see the module docstring).
SAMPLERS = ("gibbs", "exact", "expectation")


@dataclass(frozen=True)
class CDOptions:
    """Contrastive divergence's own settings.

    Attributes
    ----------
    cd_steps : int
        MCMC steps per gradient step (k of CD-k).
    sampler : {"gibbs", "exact", "expectation"}
        The model's MCMC kernel, its exact sampler, or the exact model expectation
        ``∇ log Z`` in place of negative samples.
    persistent : bool
        Carry the chains across steps (PCD) instead of restarting them at the data.
    """

    cd_steps: int = 1
    sampler: str = "gibbs"
    persistent: bool = False


def cd_gradient(model, theta, data, negatives, data_terms=None, negative_terms=None):
    """The loss CD reports and its gradient estimate.

    The loss is the exact negative mean log-likelihood ``log Z(θ) − mean f_θ(data)``
    when the model has an exact log Z (for the grid Gaussian this also raises
    ``NotPositiveDefiniteError`` outside the cone, which the optimizer backs off from),
    and otherwise the free-energy gap ``mean f_θ(negatives) − mean f_θ(data)``.
    ``negatives=None`` takes the model expectation ``∇ log Z(θ)`` in their place (a
    model with an exact log Z only).

    ``data_terms`` and ``negative_terms``, when given, are ``log_density_vjp``'s pairs
    for the two sets (from :meth:`~sparsegauss.models.EnergyModel.mcmc_vjp`).

    Returns
    -------
    loss : float
    grad : ndarray, shape (n_params,)
    """
    if negatives is None:
        # The model expectation ∇ log Z in place of the negatives: the exact likelihood.
        return model.likelihood_terms(theta, data)
    mean_data, mean_grad_data = model.mean_log_density_and_grad(theta, data, data_terms)
    if model.has_log_partition:
        # The chains' values are not needed (log Z replaces them): the gradient's pass only.
        loss = model.log_partition_value(theta) - mean_data
        grad_negatives = model.log_density_grad(
            theta, negatives, np.full(len(negatives), 1.0 / len(negatives)))
    else:
        mean_negatives, grad_negatives = model.mean_log_density_and_grad(
            theta, negatives, negative_terms)
        loss = mean_negatives - mean_data
    return loss, grad_negatives - mean_grad_data


def fit_cd(model, X, *, theta0, scale, options=CDOptions(), optimizer=OptimizerOptions(),
           rng=None):
    """Fit θ by contrastive divergence (a stochastic optimizer is required).

    Returns
    -------
    scipy.optimize.OptimizeResult
    """
    if not optimizer.stochastic:
        raise ValueError("Contrastive divergence has a stochastic gradient and no loss to "
                         f"line-search; use optimizer 'adam', 'sgd' or 'rmsprop', not "
                         f"{optimizer.optimizer!r}.")
    if options.sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {options.sampler!r}.")
    if options.sampler == "expectation" and not model.has_log_partition:
        raise TypeError(f"sampler='expectation' needs the exact log Z and its gradient; "
                        f"{type(model).__name__} has not. Use sampler='gibbs'.")
    rng = np.random.default_rng(rng)
    chains = {}

    def draw(rows):
        return (X if rows is None else model.minibatch(X, rows)), ()

    def objective(theta, batch, _drawn):
        if options.sampler == "expectation":
            return cd_gradient(model, theta, batch, None)
        if model.has_log_partition:
            # Outside the cone the Gibbs conditionals are undefined: fail before sampling.
            model.log_partition_value(theta)
        if options.sampler == "exact":
            negatives = model.sample(theta, len(batch), rng)
        elif options.persistent:
            start = chains.get("state")
            if start is None or len(start) != len(batch):
                start = batch
            negatives = chains["state"] = model.mcmc(theta, start, options.cd_steps, rng)
        elif model.has_log_partition:
            # Its gradient needs no values at the chains' end (log Z replaces them).
            negatives = model.mcmc(theta, batch, options.cd_steps, rng)
        else:
            # Chains from the data: the model's MCMC has evaluated both ends already.
            negatives, data_terms, negative_terms = model.mcmc_vjp(
                theta, batch, options.cd_steps, rng)
            return cd_gradient(model, theta, batch, negatives, data_terms, negative_terms)
        return cd_gradient(model, theta, batch, negatives)

    result = run(objective, draw, len(X), theta0, scale, optimizer, rng, name="cd")
    return result
