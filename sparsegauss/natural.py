"""The natural-image study: grid Gaussians and a deep energy model on photo patches.

:func:`run_study` takes photographs (the bundled CC0 / public-domain ones, or a user's),
cuts random patches from the training photographs and held-out patches from the others
(split by image, so held-out patches are never from a photograph seen in training), and

1. fits the 4- and 8-neighbour grid Gaussians by exact MLE, NCE and score matching
   (held-out log-likelihood, KL to the MLE);
2. fits the two-layer deep energy model (:class:`~sparsegauss.deep.DeepEnergyModel`) by
   NCE for σ ∈ {1, 0.1} on whitened and on raw (centred) patches, and by score matching
   and CD on whitened patches with σ = 1;
3. measures every DEM's log Z three ways — NCE's learned ζ, importance sampling, and
   annealed importance sampling (AIS, used for every density the study reports) — and
   the held-out log-likelihood against the Gaussian's;
4. scores held-out natural patches, samples of the fitted Gaussian and MNIST digits
   (bundled test images, scaled to [0, 1] like the patches) with every model: mean and
   standard deviation of log p and the ROC AUC of natural-vs-Gaussian and
   natural-vs-MNIST (log p as the classifier's score);
5. finds modes of the best DEM from Gaussian samples, draws MALA samples, and measures
   how localized its filters are.

It returns a summary (plain numbers, JSON-ready) and matplotlib figures; the CLI
(``sparsegauss natural``) writes them with a report (:func:`sparsegauss.report.render_natural`).
"""

import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .deep import DeepEnergyModel
from .divergence import kl_divergence
from .model import GridGaussian
from .photos import extract_patches, split_images

__all__ = ["DEM_CONFIGS", "StudySettings", "filter_locality", "run_study"]

#: The DEM fits of the study: name -> DeepEnergyModel parameters. σ = 1 matches whitened
#: patches (unit variance); σ = 0.1 matches raw pixels (patch pixels have std ~0.1–0.2).
DEM_CONFIGS = {
    "nce whitened σ=1": dict(method="nce", whitening="symmetric", sigma=1.0),
    "nce whitened σ=0.1": dict(method="nce", whitening="symmetric", sigma=0.1),
    "nce raw σ=1": dict(method="nce", whitening=None, sigma=1.0),
    "nce raw σ=0.1": dict(method="nce", whitening=None, sigma=0.1),
    "sm whitened σ=1": dict(method="sm", whitening="symmetric", sigma=1.0),
    "cd whitened σ=1": dict(method="cd", whitening="symmetric", sigma=1.0),
}
#: The configuration the modes, samples and the "does it beat the Gaussian" answer use.
MAIN_CONFIG = "nce whitened σ=1"


@dataclass(frozen=True)
class StudySettings:
    """Sizes of the study (defaults: the exercise's 50,000 patches of 28 × 28, H = K = 64).

    Attributes
    ----------
    n_patches, n_test : int
        Training patches (from the training photographs) and held-out patches (from the
        held-out photographs).
    patch_shape : (int, int)
    n_hidden, n_units : int
        H and K of the DEM.
    dem_steps : int
        Adam steps of every DEM fit.
    dem_configs : tuple of str
        Keys of :data:`DEM_CONFIGS` to run (must include :data:`MAIN_CONFIG`).
    ais_chains, ais_temperatures : int
        Annealed importance sampling of each DEM's log Z.
    test_fraction : float
        Share of the photographs held out.
    seed : int
    """

    n_patches: int = 50_000
    n_test: int = 10_000
    patch_shape: tuple = (28, 28)
    n_hidden: int = 64
    n_units: int = 64
    dem_steps: int = 2000
    dem_configs: tuple = tuple(DEM_CONFIGS)
    ais_chains: int = 200
    ais_temperatures: int = 500
    test_fraction: float = 0.2
    seed: int = 0

    def check(self):
        unknown = sorted(set(self.dem_configs) - set(DEM_CONFIGS))
        if unknown or MAIN_CONFIG not in self.dem_configs:
            raise ValueError(f"dem_configs must be keys of DEM_CONFIGS including "
                             f"{MAIN_CONFIG!r}; got {list(self.dem_configs)}.")
        for name in ("n_patches", "n_test", "n_hidden", "n_units", "dem_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer; got "
                                 f"{getattr(self, name)!r}.")


def _timed(fit):
    """Run ``fit()``; returns its value, the seconds taken and the warnings raised."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fit()
    return value, time.perf_counter() - start, sorted({str(w.message) for w in caught})


def _gaussian_fits(X, X_test, seed, say):
    """Exact MLE, NCE and score matching (barrier when the closed form is indefinite)."""
    rows, models = [], {}
    shape = X.shape[1:]
    flat, flat_test = X.reshape(len(X), -1), X_test.reshape(len(X_test), -1)
    # NCE twice: at its defaults (the adaptive noise, given only the pixel variances),
    # and given the 4-neighbour MLE as its noise (labelled so: for 4 neighbours that is
    # the answer), the fixed noise that works on patches, where the adaptive one does not.
    fits = [("mle", {}), ("nce", {}), ("nce 4-nbr MLE noise", dict(noise="grid-untied")),
            ("sm", {})]
    for stencil in (4, 8):
        for label, options in fits:
            method = label.split()[0]
            model, seconds, messages = _timed(lambda: GridGaussian(
                shape, stencil=stencil, method=method, random_state=seed,
                **options).fit(flat))
            if method == "sm" and not model.is_positive_definite_:
                rows.append(dict(estimator="sm closed form", stencil=stencil,
                                 seconds=seconds, positive_definite=False, converged=False,
                                 warnings=messages))
                model, seconds, messages = _timed(lambda: GridGaussian(
                    shape, stencil=stencil, method="sm", sm_solver="barrier",
                    random_state=seed).fit(flat))
                label = "sm barrier"
            say(f"  Gaussian {label}, {stencil} neighbours: {seconds:.1f} s")
            row = dict(estimator=label, stencil=stencil, seconds=seconds,
                       positive_definite=bool(model.is_positive_definite_),
                       converged=bool(model.converged_), warnings=messages)
            if model.is_positive_definite_:
                mle = models.get((stencil, "mle"), model)
                row.update(train_loglik=model.score(flat), test_loglik=model.score(flat_test),
                           kl_to_mle=0.0 if mle is model else kl_divergence(mle, model))
            rows.append(row)
            models[stencil, label] = model
    return rows, models


def filter_locality(filters, window=7):
    """Share of each filter's squared norm inside a ``window × window`` square centred at
    its largest-magnitude pixel (clipped at the border).

    A filter spread evenly over a 28 × 28 patch scores ~49/784 = 0.06; a localized edge
    detector close to 1.
    """
    filters = np.asarray(filters, dtype=float)
    n, height, width = filters.shape
    energy = filters ** 2
    peaks = energy.reshape(n, -1).argmax(axis=1)
    rows, cols = np.divmod(peaks, width)
    half = window // 2
    shares = np.empty(n)
    for i in range(n):               # 64 filters: a loop over filters, not pixels
        box = energy[i, max(rows[i] - half, 0):rows[i] + half + 1,
                     max(cols[i] - half, 0):cols[i] + half + 1]
        shares[i] = box.sum() / energy[i].sum()
    return shares


def _roc_auc(positive, negative):
    """ROC AUC of telling ``positive`` (higher scores) from ``negative``."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[positive, negative]))


def _describe(values):
    values = np.asarray(values, dtype=float)
    return dict(mean=float(values.mean()), std=float(values.std()))


def _mnist_digits(n, shape):
    """The bundled MNIST test digits in [0, 1] (the patches' scale), or None when the
    patches are not 28 × 28."""
    if tuple(shape) != (28, 28):
        return None
    from .datasets import load_mnist

    images, _ = load_mnist("test", download=False)
    return images[:n].reshape(min(n, len(images)), -1).astype(np.float64) / 255.0


def run_study(images, *, image_names=None, licences=None, settings=StudySettings(),
              say=print):
    """Run the study on photographs.

    Parameters
    ----------
    images : list of 2-D arrays
        Greyscale photographs in [0, 1] (:func:`~sparsegauss.photos.load_images`,
        :func:`~sparsegauss.photos.load_natural_images`); at least two.
    image_names, licences : list of str, optional
        For the report's description of the patch set.
    settings : StudySettings
    say : callable
        Progress messages (``print``, or a no-op).

    Returns
    -------
    summary : dict
        Every number the report shows (JSON-ready).
    figures : dict
        File name -> matplotlib Figure.
    """
    from . import plotting

    settings.check()
    study_start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    names = list(image_names) if image_names is not None else [f"image {i + 1}"
                                                                 for i in range(len(images))]
    shape = tuple(settings.patch_shape)
    # A photograph smaller than a patch gives no patch: leave it out of the split (else
    # it could be the only held-out photograph), and say so.
    small = [i for i, image in enumerate(images)
             if image.shape[0] < shape[0] or image.shape[1] < shape[1]]
    too_small = [names[i] for i in small]
    if small:
        warnings.warn(f"{', '.join(too_small)} {'is' if len(small) == 1 else 'are'} smaller "
                      f"than the {shape[0]}×{shape[1]} patches and left out of the study.",
                      UserWarning, stacklevel=2)
        kept = [i for i in range(len(images)) if i not in small]
        images = [images[i] for i in kept]
        names = [names[i] for i in kept]
        licences = [licences[i] for i in kept] if licences is not None else None
    if len(images) < 2:
        raise ValueError("The study holds out whole photographs, so it needs at least two "
                         f"of at least {shape[0]}×{shape[1]} pixels; got {len(images)}"
                         + (f" ({', '.join(too_small)} too small)" if too_small else "")
                         + ".")
    order = np.arange(len(images))
    train_idx, test_idx = split_images(order, settings.test_fraction, random_state=rng)
    start = time.perf_counter()
    X = extract_patches([images[i] for i in train_idx], settings.n_patches, shape,
                        random_state=rng)
    X_test = extract_patches([images[i] for i in test_idx], settings.n_test, shape,
                             random_state=rng)
    patch_seconds = time.perf_counter() - start

    def photographs(n):
        return f"{n} photograph{'s' if n != 1 else ''}"

    say(f"Patches: {len(X):,} training ({photographs(len(train_idx))}), {len(X_test):,} "
        f"held out ({photographs(len(test_idx))}), {shape[0]}×{shape[1]}; "
        f"{patch_seconds:.1f} s")
    X3, X3_test = X.reshape((-1,) + shape), X_test.reshape((-1,) + shape)
    flat, flat_test = X.astype(np.float64), X_test.astype(np.float64)

    say("Grid Gaussians")
    gaussian_rows, gaussians = _gaussian_fits(X3, X3_test, settings.seed, say)
    gaussian = gaussians[4, "mle"]
    train_sample = flat[:settings.n_test]
    gauss_train = gaussian.score(train_sample)
    # log p of the held-out patches under each model, scored once: the DEM table and
    # the discrimination table both read them.
    held_out_scores = {"grid Gaussian (4-nbr MLE)": gaussian.score_samples(flat_test)}
    gauss_test = float(np.mean(held_out_scores["grid Gaussian (4-nbr MLE)"]))

    say("Deep energy models")
    dem_rows, dems, log_z = [], {}, {}
    for name in settings.dem_configs:
        model, seconds, messages = _timed(lambda: DeepEnergyModel(
            settings.n_hidden, settings.n_units, max_iter=settings.dem_steps,
            random_state=settings.seed, **DEM_CONFIGS[name]).fit(flat))
        ais, ais_se = model.log_partition_ais(settings.ais_chains, settings.ais_temperatures,
                                              random_state=settings.seed)
        dems[name], log_z[name] = model, ais
        held_out_scores[name] = model.unnormalized_score_samples(flat_test) - ais
        row = dict(model=name, seconds=seconds, warnings=messages, n_iter=model.n_iter_,
                   converged=bool(model.converged_),
                   log_z_ais=ais, log_z_ais_stderr=ais_se,
                   log_z_importance=model.log_partition_importance_,
                   log_z_importance_stderr=model.log_partition_importance_stderr_,
                   importance_ess=model.importance_ess_,
                   log_z_nce=getattr(model, "log_partition_estimate_", None),
                   train_loglik=float(np.mean(
                       model.unnormalized_score_samples(train_sample))) - ais,
                   test_loglik=float(np.mean(held_out_scores[name])),
                   final_loss=float(model.history_[-1]["loss"]),
                   filter_locality=float(np.median(filter_locality(model.filters()))),
                   **DEM_CONFIGS[name])
        row["test_gain"] = row["test_loglik"] - gauss_test
        row["train_gain"] = row["train_loglik"] - gauss_train
        dem_rows.append(row)
        say(f"  {name}: {seconds:.1f} s, held-out {row['test_gain']:+.2f} nats/patch vs the "
            "Gaussian")

    say("Discrimination")
    samples = gaussian.sample(settings.n_test, random_state=rng)
    digits = _mnist_digits(settings.n_test, shape)
    sets = {"Gaussian samples": samples}
    if digits is not None:
        sets["MNIST digits"] = digits
    scorers = {"grid Gaussian (4-nbr MLE)": gaussian.score_samples}
    scorers.update({name: (lambda Z, m=dems[name], z=log_z[name]:
                           m.unnormalized_score_samples(Z) - z)
                    for name in settings.dem_configs if name.startswith("nce")})
    discrimination = []
    for scorer_name, scorer in scorers.items():
        scores = {"natural (held out)": held_out_scores[scorer_name]}
        scores.update({set_name: scorer(values) for set_name, values in sets.items()})
        row = dict(model=scorer_name,
                   **{set_name: _describe(v) for set_name, v in scores.items()},
                   auc_gaussian=_roc_auc(scores["natural (held out)"],
                                         scores["Gaussian samples"]))
        if digits is not None:
            row["auc_mnist"] = _roc_auc(scores["natural (held out)"], scores["MNIST digits"])
        discrimination.append(row)

    say("Modes and samples")
    main = dems[MAIN_CONFIG]
    starts = gaussian.sample(16, random_state=rng)
    (modes, mode_seconds, _) = _timed(lambda: main.find_modes(starts))
    dem_samples = main.sample(16, random_state=rng)
    main_score = (lambda Z: main.unnormalized_score_samples(Z) - log_z[MAIN_CONFIG])
    modes_summary = dict(
        model=MAIN_CONFIG, n_steps=int(main.n_mode_steps_), seconds=mode_seconds,
        start_logp=_describe(main_score(starts)), mode_logp=_describe(main_score(modes)),
        distinct=int(len(np.unique(np.round(modes, 3), axis=0))))

    figures = {
        "patches.png": plotting.plot_samples(X[:32], shape, title="Training patches"),
        "gaussian-samples.png": plotting.plot_sampler_comparison(
            gaussian, n_samples=16, random_state=settings.seed),
        "couplings-4.png": plotting.plot_couplings(gaussians[4, "mle"],
                                                   title="Patch MLE precision, 4 neighbours"),
        "couplings-8.png": plotting.plot_couplings(gaussians[8, "mle"],
                                                   title="Patch MLE precision, 8 neighbours"),
        "dem-modes.png": plotting.plot_samples(
            np.vstack([starts, modes]), shape,
            title=f"Gaussian samples (top two rows) and the {MAIN_CONFIG} DEM's modes "
                  "reached from them (bottom two)"),
        "dem-samples.png": plotting.plot_samples(
            dem_samples, shape, title=f"MALA samples of the {MAIN_CONFIG} DEM"),
        "dem-curves.png": plotting.plot_learning_curves(
            {name: dems[name].history_ for name in settings.dem_configs},
            title="DEM learning curves (minibatch loss)"),
    }
    for name in settings.dem_configs:
        slug = name.replace(" ", "-").replace("σ=", "sigma")
        figures[f"filters-{slug}.png"] = plotting.plot_filters(
            dems[name].filters(), title=f"DEM filters in pixel space: {name}")

    summary = dict(
        settings=asdict(settings),
        images=dict(names=names, licences=list(licences) if licences else None,
                    too_small=too_small,
                    train=[names[i] for i in train_idx], test=[names[i] for i in test_idx],
                    n_patches=len(X), n_test=len(X_test), patch_shape=list(shape),
                    patch_seconds=patch_seconds, mean=float(X.mean()), std=float(X.std())),
        gaussian=gaussian_rows, gaussian_test_loglik=gauss_test,
        dem=dem_rows, discrimination=discrimination, modes=modes_summary,
        mnist=digits is not None, main_config=MAIN_CONFIG,
        figures=sorted(figures), seconds=time.perf_counter() - study_start)
    return summary, figures
