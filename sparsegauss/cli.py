"""The ``sparsegauss`` command.

``get_parser()`` builds the argument parser and ``main(argv=None) -> int`` runs it, so
tests call ``main([...])`` and read the exit code. Subcommands:

* ``demo`` — the main job, the MNIST study: 4- and 8-neighbour models fitted by exact
  maximum likelihood, NCE, conditional NCE and score matching; figures, ``report.md``,
  ``summary.json`` and a summary table.
* ``fit`` — one model, any estimator, on MNIST or a user's ``.npy``/``.npz`` images.
* ``natural`` — the natural-image study: grid Gaussians and a deep energy model on
  patches of the bundled photographs or a user's folder (:mod:`sparsegauss.natural`).
* ``sample`` — samples of a saved model to a PNG grid and/or ``.npy``.
* ``info`` — versions, the BLAS under CHOLMOD, thread counts.
* ``bench`` — the benchmark suite (from a source checkout).

Exit codes: 0 success, 1 error (the message says what to do), 2 usage.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import __version__, report
from .datasets import (DataError, integer_scale, is_idx_file, load_idx, load_mnist,
                       scale_and_noise)
from .exceptions import SparseGaussError
from .divergence import kl_divergence
from .model import METHODS, OPTIMIZERS, SM_SOLVERS, GridGaussian
from .natural import StudySettings
from .noise import NOISES

__all__ = ["get_parser", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: The demo's estimators and their settings. Conditional NCE is left out: at its defaults
#: it ends indefinite on MNIST with both stencils (docs/performance.md, "Estimators on MNIST"). NCE runs with
#: the adaptive noise (its default since 2026-12-01; named here so the report can say
#: so), which needs only the data's variances; the former default ("grid-untied") is the
#: 4-neighbour MLE itself, so a 4-neighbour NCE would start at the answer it is scored
#: against, and the 8-neighbour one ended KL 13.5 from its MLE. (With 4,000 Adam steps,
#: its default until 2026-12-04, on the demo's 8,000 training images: KL to the MLE
#: 0.39 / 1.28, 4 / 8 neighbours; 2.0 / 3.8 at 2,000 steps; 8.5 s a fit, one run each.
#: Its default is now 3,500, 2,500 of them adapting the noise.)
DEMO_SETTINGS = {
    "mle": dict(method="mle"),
    "nce": dict(method="nce", noise="adaptive"),
    "cd": dict(method="cd"),
    "sm": dict(method="sm"),
}
DEMO_METHODS = tuple(DEMO_SETTINGS)
#: Noises compared in the demo's short NCE runs (the report's "which noise" question).
NOISE_CHECK = ("diagonal", "grid", "empirical", "grid-untied")
NOISE_CHECK_STEPS = 300
#: The demo's reduced natural-image study (the full one: ``sparsegauss natural``): two
#: DEMs (whitened σ = 1, the matched one; raw σ = 0.1, the exercise's other scale).
DEMO_NATURAL = StudySettings(n_patches=10_000, n_test=5_000, dem_steps=1000,
                             dem_configs=("nce whitened σ=1", "nce raw σ=0.1"),
                             ais_chains=100, ais_temperatures=300)
#: Pixel noise added to MNIST and to integer images (after scaling them to [0, 1]).
DEFAULT_NOISE_STD = 0.1
#: Most samples a PNG grid shows, and most pixels it holds: a grid of 10,000 samples was
#: a 1078 × 151,316-pixel image.
PNG_MAX_SAMPLES = 64
PNG_MAX_PIXELS = 1 << 24


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text):
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _shrinkage(text):
    value = _non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _add_data_options(parser):
    parser.add_argument("--data-home", type=Path, default=None,
                        help="directory with the MNIST IDX files (default: $SPARSEGAUSS_DATA, "
                             "the user cache, the bundled test set, then a download)")
    parser.add_argument("--offline", action="store_true",
                        help="never download; fail if the files are not found locally")
    parser.add_argument("--noise-std", type=_non_negative_float, default=None,
                        help="std of the N(0, s²) pixel noise added after scaling to "
                             "[0, 1]: MNIST and integer images (IDX, integer .npy) get "
                             f"{DEFAULT_NOISE_STD} by default; float arrays are used as "
                             "given unless this is set")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _add_output_options(parser, default_out):
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help="output directory (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or messages; only the summary table")
    parser.add_argument("--verbose", action="store_true",
                        help="log every optimizer iteration")


def get_parser():
    """Argument parser of the ``sparsegauss`` command."""
    parser = argparse.ArgumentParser(
        prog="sparsegauss",
        description="Fit Gaussian models with sparse grid-structured precision matrices.")
    parser.add_argument("--version", action="version", version=f"sparsegauss {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="the MNIST study: MLE, NCE, CNCE and score matching, 4 and 8 neighbours",
        description="Fit 4- and 8-neighbour grid Gaussians to MNIST (scaled to [0, 1], "
                    "N(0, 0.1²) pixel noise, mean subtracted) with exact maximum "
                    "likelihood, NCE, conditional NCE and score matching; write figures, "
                    "report.md and summary.json to --out and print a summary table. By "
                    "default the bundled 10,000 test images are split 8,000/2,000 into "
                    "train and held-out sets (runs offline).")
    _add_output_options(demo, "demo-output")
    demo.add_argument("--full", action="store_true",
                      help="train on the 60,000 training images and hold out the 10,000 "
                           "test images (needs the training files; see --data-home)")
    demo.add_argument("--natural-patches", type=_non_negative_int,
                      default=DEMO_NATURAL.n_patches,
                      help="patches of the bundled photographs for the report's reduced "
                           "natural-image study (written to OUT/natural; 0 skips it; "
                           "'sparsegauss natural' runs the full one; default: %(default)s)")
    demo.add_argument("--methods", default=",".join(DEMO_METHODS),
                      help="comma-separated subset of %(default)s")
    _add_data_options(demo)
    demo.set_defaults(run=_run_demo)

    fit = commands.add_parser(
        "fit", help="fit one model to MNIST or to your own images and save it",
        description="Fit a grid Gaussian with any estimator to MNIST (preprocessed as in "
                    "the demo) or to an array of images in a .npy/.npz file (used as "
                    "given: float, shape (n, H, W), or (n, H*W) with --shape), or to a "
                    "directory of .npy shards streamed chunk by chunk. Saves "
                    "model.npz and figures (couplings, samples, learning curve) to --out.")
    fit.add_argument("data", nargs="?", default="mnist",
                     help="'mnist' (default), a .npy/.npz file of images, an IDX file "
                          "(gzip or raw, e.g. images-idx3-ubyte.gz), or a directory of "
                          ".npy shards (MLE and score matching; needs --shape)")
    fit.add_argument("--key", default=None, help="array name inside a .npz file")
    fit.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"),
                     help="image shape, for flattened (n, H*W) arrays")
    fit.add_argument("--method", default="mle", choices=METHODS)
    fit.add_argument("--stencil", type=int, default=4, choices=(4, 8))
    fit.add_argument("--tying", default="untied", choices=("untied", "tied"))
    fit.add_argument("--optimizer", default=None, choices=sorted(OPTIMIZERS),
                     help="default: the method's own (see GridGaussian)")
    fit.add_argument("--max-iter", type=_positive_int, default=None,
                     help="most iterations (default: the method's own, see GridGaussian)")
    fit.add_argument("--tol", type=_non_negative_float, default=None,
                     help="stopping tolerance (default: the method's own)")
    fit.add_argument("--alpha", type=_shrinkage, default=0.0,
                     help="shrinkage of the couplings in [0, 1) for few samples (MLE and "
                          "score matching; default: %(default)s)")
    fit.add_argument("--noise", default="auto", choices=NOISES, help="NCE/RNCE noise")
    fit.add_argument("--nu", type=_positive_float, default=None,
                     help="NCE's noise-to-data ratio (default: 1, more for few samples: "
                          "the smallest integer with (1 + nu) N >= 4 x parameters)")
    fit.add_argument("--learning-rate", type=_positive_float, default=None,
                     help="step size of adam/sgd/rmsprop (default: 0.02 for cd, else 0.01)")
    fit.add_argument("--batch-size", type=_positive_int, default=256,
                     help="minibatch size of adam/sgd/rmsprop (default: %(default)s)")
    fit.add_argument("--sm-solver", default="closed-form", choices=SM_SOLVERS)
    fit.add_argument("--full", action="store_true",
                     help="MNIST: the 60,000 training images (default: the bundled 10,000 "
                          "test images)")
    fit.add_argument("--train-size", type=_positive_int, default=None,
                     help="use only the first N images")
    _add_output_options(fit, "fit-output")
    _add_data_options(fit)
    fit.set_defaults(run=_run_fit)

    natural = commands.add_parser(
        "natural", help="the natural-image study: grid Gaussians and a deep energy model "
                        "on photo patches",
        description="Cut random patches from photographs (the bundled CC0 / public-domain "
                    "ones, or --images), hold out whole photographs, fit 4- and 8-neighbour "
                    "grid Gaussians (MLE, NCE, score matching) and the two-layer deep "
                    "energy model (NCE on whitened and raw patches, σ = 1 and 0.1; score "
                    "matching and CD), and write figures, report.md and summary.json to "
                    "--out. At the defaults it takes about 6 minutes on 2 cores.")
    _add_output_options(natural, "natural-output")
    natural.add_argument("--images", default=None,
                         help="a folder, glob or file of JPEG/PNG photographs (at least "
                              "two; default: the photographs bundled with scikit-image)")
    natural.add_argument("--max-side", type=_non_negative_int, default=512,
                         help="downsample photographs whose longer side exceeds this "
                              "(multi-megapixel photos otherwise give mostly flat "
                              "patches; 0 keeps the full size; default: %(default)s)")
    natural.add_argument("--skip-unreadable", action="store_true",
                         help="skip files that are not images (with a warning) instead "
                              "of stopping")
    natural.add_argument("--n-patches", type=_positive_int, default=StudySettings.n_patches,
                         help="training patches (default: %(default)s)")
    natural.add_argument("--n-test", type=_positive_int, default=StudySettings.n_test,
                         help="held-out patches (default: %(default)s)")
    natural.add_argument("--patch-size", type=_positive_int, default=28,
                         help="patch side in pixels (default: %(default)s; MNIST digits "
                              "are scored only at 28)")
    natural.add_argument("--steps", type=_positive_int, default=StudySettings.dem_steps,
                         help="Adam steps of each deep-energy fit (default: %(default)s)")
    natural.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    natural.set_defaults(run=_run_natural)

    sample = commands.add_parser(
        "sample", help="draw samples from a saved model",
        description="Draw exact samples from a model saved by 'sparsegauss fit' or "
                    "'demo' and write them as a PNG grid and/or a .npy array.")
    sample.add_argument("model", type=Path, help="a model .npz file")
    sample.add_argument("-n", "--n-samples", type=_positive_int, default=32)
    sample.add_argument("--png", type=Path, default=None,
                        help=f"PNG grid to write (shows at most the first {PNG_MAX_SAMPLES} "
                             "samples)")
    sample.add_argument("--npy", type=Path, default=None,
                        help=".npy array to write (all samples, shape (n, H, W))")
    sample.add_argument("--sqrt", default="cholesky", choices=("cholesky", "symmetric"),
                        help="square root of Σ (default: %(default)s)")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(run=_run_sample)

    info = commands.add_parser(
        "info", help="versions, the BLAS under CHOLMOD and thread counts",
        description="Print the versions of sparsegauss and the libraries it runs on, the "
                    "BLAS and LAPACK libraries CHOLMOD calls (reference or optimized), "
                    "and the thread pools (like numpy.show_config()).")
    info.add_argument("--json", action="store_true", help="print it as JSON")
    info.set_defaults(run=_run_info)

    bench = commands.add_parser(
        "bench", help="run the benchmark suite (from a source checkout)",
        description="Run benchmarks/bench_*.py (python -m benchmarks) and write "
                    "results.json and results.md to --out.")
    bench.add_argument("--quick", action="store_true", help="small sizes, seconds")
    bench.add_argument("--filter", default="", help="only benchmarks containing this")
    bench.add_argument("--out", type=Path, default=Path("benchmark-results"))
    bench.set_defaults(run=_run_bench)
    return parser


def main(argv=None):
    """Run the command; returns the exit code (0 success, 1 error, 2 usage)."""
    parser = get_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:           # argparse exits on --help/--version/bad usage
        return int(exc.code) if exc.code is not None else EXIT_OK
    try:
        return args.run(args)
    except (DataError, SparseGaussError, ValueError, TypeError, OSError) as exc:
        print(f"sparsegauss {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _prepare_output(directory):
    """The output directory, created if missing (its parent must exist: a mistyped path
    is an error, not a tree of new directories)."""
    parent = directory.parent if str(directory.parent) else Path(".")
    if not directory.is_dir() and parent.exists() and not parent.is_dir():
        raise OSError(f"cannot write to the output directory {directory}: {parent} is a "
                      "file, not a directory. Choose another with --out.")
    if not directory.is_dir() and not parent.is_dir():
        raise OSError(f"cannot create the output directory {directory}: its parent "
                      f"{parent} does not exist. Create it first or choose another --out.")
    try:
        directory.mkdir(exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to the output directory {directory}: {exc.strerror}. "
                      "Choose another with --out.") from exc
    return directory


def _check_target(path, option):
    """An output file's directory must exist and be writable; nothing is created."""
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OSError(f"{option} {path} is a directory; give a file name.")
    if not directory.is_dir():
        raise OSError(f"{option} {path}: the directory {directory} does not exist. "
                      "Create it first or choose another path.")
    if not os.access(directory, os.W_OK):
        raise OSError(f"{option} {path}: the directory {directory} is not writable.")
    return path


def _noise_std(args, default):
    return default if args.noise_std is None else args.noise_std


def _mnist_split(args):
    rng = np.random.default_rng(args.seed)
    if args.full:
        train, _ = load_mnist("train", data_home=args.data_home, download=not args.offline)
        test, _ = load_mnist("test", data_home=args.data_home, download=not args.offline)
        source = "MNIST train (60,000) / test (10,000)"
    else:
        images, _ = load_mnist("test", data_home=args.data_home, download=not args.offline)
        train, test = images[:8000], images[8000:]
        source = "MNIST test images, split 8,000 train / 2,000 held out"
    noise_std = _noise_std(args, DEFAULT_NOISE_STD)
    return (scale_and_noise(train, noise_std, rng),
            scale_and_noise(test, noise_std, rng), source)


def _progress(args, total, desc):
    """A progress bar: quiet with --quiet or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, disable=True if args.quiet else None, leave=False)


def _warm_up(methods, seed):
    """Compile the Numba kernels of every demo method on a tiny problem, untimed.

    Without it the first fit's time includes the one-off compilation (or the load of
    Numba's on-disk cache), and the 4-neighbour MLE, which runs first, looked slower
    than it is.
    """
    from .datasets import make_grid_gaussian

    _, X = make_grid_gaussian((6, 6), 300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in methods:
            settings = dict(DEMO_SETTINGS[name], max_iter=5)
            GridGaussian((6, 6), random_state=seed, **settings).fit(X)
        GridGaussian((6, 6), method="sm", sm_solver="barrier", max_iter=2).fit(X)


def _fit_timed(X, stencil, settings, seed, verbose=False):
    """Fit one model to flattened MNIST images; returns it, the seconds taken and the
    warnings it raised (kept in summary.json rather than interleaved with the table)."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GridGaussian((28, 28), stencil=stencil, random_state=seed, verbose=verbose,
                             **settings).fit(X)
    return model, time.perf_counter() - start, [str(w.message) for w in caught]


def _summary_row(name, stencil, model, seconds, X_train, X_test, mle, messages):
    row = dict(estimator=name, stencil=stencil, seconds=seconds,
               positive_definite=bool(model.is_positive_definite_),
               converged=bool(model.converged_), n_iter=int(model.n_iter_),
               n_params=int(model.theta_.size), n_train=int(len(X_train)),
               warnings=messages)
    if model.is_positive_definite_:
        row.update(train_loglik=model.score(X_train), test_loglik=model.score(X_test),
                   log_partition=model.log_partition_,
                   # The reference's divergence from itself is 0 by definition (computed,
                   # it is a rounding residue of tr(ΛΣ) − D, ~1e-13).
                   kl_to_mle=(kl_divergence(mle, model)
                              if mle is not None and mle is not model else 0.0))
    else:
        row.update(train_loglik=float("nan"), test_loglik=float("nan"),
                   log_partition=float("nan"), kl_to_mle=float("nan"))
    if hasattr(model, "log_partition_estimate_"):
        row.update(log_partition_estimate=model.log_partition_estimate_,
                   log_partition_error=model.log_partition_estimate_ - row["log_partition"])
    return row


def _run_demo(args):
    out = _prepare_output(args.out)
    say = (lambda *a: None) if args.quiet else print
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(DEMO_METHODS))
    if unknown or "mle" not in methods:
        raise ValueError(f"--methods must be a comma-separated subset of "
                         f"{','.join(DEMO_METHODS)} that includes mle (the reference); "
                         f"got {args.methods!r}.")
    X_train, X_test, source = _mnist_split(args)
    _warm_up(methods, args.seed)
    say(f"Data: {source}; noise std {_noise_std(args, DEFAULT_NOISE_STD)}; "
        f"D = {X_train.shape[1]} pixels")
    from . import plotting

    rows, curves, models = [], {}, {}
    jobs = [(stencil, name) for stencil in (4, 8) for name in methods]
    # The noise comparison belongs to the NCE part of the study.
    noises = NOISE_CHECK if "nce" in methods else ()
    with _progress(args, len(jobs) + len(noises), "demo fits") as bar:
        for stencil, name in jobs:
            bar.set_postfix_str(f"{name}, {stencil} neighbours")
            model, seconds, messages = _fit_timed(X_train, stencil, DEMO_SETTINGS[name],
                                                  args.seed, args.verbose)
            label = name
            if name == "sm" and not model.is_positive_definite_:
                rows.append(_summary_row("sm closed form", stencil, model, seconds, X_train,
                                         X_test, models.get((stencil, "mle")), messages))
                # The closed form is indefinite on MNIST: the barrier path gives the
                # best positive-definite score-matching estimate.
                model, seconds, messages = _fit_timed(
                    X_train, stencil, dict(method="sm", sm_solver="barrier"), args.seed,
                    args.verbose)
                label = "sm barrier"
            models[stencil, name] = model
            rows.append(_summary_row(label, stencil, model, seconds, X_train, X_test,
                                     models.get((stencil, "mle")), messages))
            model.save(out / f"{name}-{stencil}.npz")
            if name == "nce":
                curves[stencil] = model
            bar.update()
        noise_rows = []
        for noise in noises:
            bar.set_postfix_str(f"NCE noise {noise}")
            model, seconds, messages = _fit_timed(
                X_train, 4, dict(method="nce", optimizer="adam", noise=noise,
                                 max_iter=NOISE_CHECK_STEPS), args.seed)
            first, last = model.history_[0]["loss"], model.history_[-1]["loss"]
            noise_rows.append(_summary_row(noise, 4, model, seconds, X_train, X_test,
                                           models[4, "mle"], messages))
            noise_rows[-1].update(initial_loss=first, final_loss=last)
            bar.update()

    figures = {}
    for stencil in (4, 8):
        mle = models[stencil, "mle"]
        figures[f"samples-{stencil}.png"] = plotting.plot_sampler_comparison(
            mle, n_samples=16, random_state=args.seed)
        figures[f"couplings-{stencil}.png"] = plotting.plot_couplings(
            mle, title=f"Exact-MLE precision, {stencil} neighbours")
        if stencil in curves:
            nce = curves[stencil]
            figures[f"nce-curve-{stencil}.png"] = plotting.plot_learning_curve(
                nce.history_, x="time",
                exact_log_partition=nce.log_partition_ if nce.is_positive_definite_ else None,
                title=f"NCE (Adam), {stencil} neighbours")
    figures["comparison.png"] = plotting.plot_comparison(rows)
    for filename, figure in figures.items():
        figure.savefig(out / filename, dpi=110)

    _print_table(rows)
    summary = dict(source=source, noise_std=_noise_std(args, DEFAULT_NOISE_STD), rows=rows,
                   noise_check=noise_rows, figures=sorted(figures),
                   natural=_demo_natural(args, out, say))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "report.md").write_text(report.render(summary))
    say(f"Wrote {out / 'report.md'}, {len(figures)} figures, summary.json and the models.")
    return EXIT_OK


def _print_table(rows):
    header = (f"{'estimator':<16} {'nbrs':>4} {'train ll':>9} {'test ll':>9} "
              f"{'KL(MLE||est)':>12} {'log Z':>9} {'NCE log Z':>10} {'PD':>3} "
              f"{'time [s]':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        estimate = r.get("log_partition_estimate")
        print(f"{r['estimator']:<16} {r['stencil']:>4d} {r['train_loglik']:>9.2f} "
              f"{r['test_loglik']:>9.2f} {r['kl_to_mle']:>12.3f} {r['log_partition']:>9.2f} "
              f"{'' if estimate is None else format(estimate, '.2f'):>10} "
              f"{'yes' if r['positive_definite'] else 'no':>3} {r['seconds']:>8.2f}")


def _read_array(path, key):
    """The array in a .npy/.npz file or an IDX file, with errors naming the file."""
    if path.suffix in (".npy", ".npz"):
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"Could not read {path} as a NumPy file: {exc}") from exc
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        with loaded:
            names = list(loaded.files)
            key = key or (names[0] if len(names) == 1 else None)
            if key not in names:
                raise DataError(f"{path} holds the arrays {names}; choose one with --key.")
            return loaded[key]
    if is_idx_file(path):
        return load_idx(path)
    raise DataError(f"{path}: expected a .npy or .npz file of images or an IDX file (e.g. "
                    "images-idx3-ubyte.gz); this file is none of these.")


def _load_images(args):
    """Images for ``fit`` as ``(n, H, W)`` floats, and a description of where from.

    MNIST and integer images (8-bit IDX files, integer arrays) are scaled to [0, 1]
    (:func:`sparsegauss.datasets.integer_scale`) and get N(0, s²) pixel noise (s =
    --noise-std, default 0.1), as in the study; float arrays are used as given, plus
    noise only if --noise-std is set.
    """
    rng = np.random.default_rng(args.seed)
    if args.data == "mnist":
        images, _ = load_mnist("train" if args.full else "test",
                               data_home=args.data_home, download=not args.offline)
        X = scale_and_noise(images, _noise_std(args, DEFAULT_NOISE_STD), rng)
        return X.reshape(len(X), 28, 28), "MNIST"
    path = Path(args.data)
    if not path.is_file():
        raise DataError(f"{path} does not exist. Give 'mnist', a .npy/.npz file, an IDX "
                        "file or a directory of .npy shards.")
    X = _read_array(path, args.key)
    if X.size == 0:
        raise DataError(f"{path} holds an empty array (shape {X.shape}): there are no "
                        "images to fit.")
    if X.ndim == 2:
        if not args.shape:
            raise DataError(f"{path} holds flattened images of shape {X.shape}; give the "
                            "image shape with --shape H W.")
        if args.shape[0] * args.shape[1] != X.shape[1]:
            raise DataError(f"--shape {args.shape[0]} {args.shape[1]} has "
                            f"{args.shape[0] * args.shape[1]} pixels, but the images have "
                            f"{X.shape[1]} ({path}).")
        X = X.reshape(len(X), *args.shape)
    elif X.ndim != 3:
        raise DataError(f"{path}: expected images of shape (n, H, W) or (n, H*W); got an "
                        f"array of shape {X.shape}.")
    if np.issubdtype(X.dtype, np.integer):
        noise_std = _noise_std(args, DEFAULT_NOISE_STD)
        dtype, scale = X.dtype, integer_scale(X)
        X = scale_and_noise(X, noise_std, rng).reshape(X.shape)
        return X, (f"{path} ({dtype} integers divided by {scale:,.0f} into [0, 1], pixel "
                   f"noise std {noise_std})")
    if not np.issubdtype(X.dtype, np.floating):
        raise DataError(f"{path} holds {X.dtype} values; expected numbers (float images, or "
                        "integer images that are scaled to [0, 1]).")
    if args.noise_std:
        X = X + args.noise_std * rng.standard_normal(X.shape)
        return X, f"{path} (plus pixel noise std {args.noise_std})"
    return X, str(path)


def _fit_settings(args):
    """The GridGaussian parameters the fit options set."""
    return dict(stencil=args.stencil, tying=args.tying, method=args.method,
                optimizer=args.optimizer, max_iter=args.max_iter, tol=args.tol,
                alpha=args.alpha, noise=args.noise, nu=args.nu,
                learning_rate=args.learning_rate, batch_size=args.batch_size,
                sm_solver=args.sm_solver, random_state=args.seed, verbose=args.verbose)


def _run_fit(args):
    say = (lambda *a: None) if args.quiet else print
    if args.data != "mnist" and Path(args.data).is_dir():
        return _fit_shards(args, _prepare_output(args.out), say)
    X, source = _load_images(args)
    out = _prepare_output(args.out)
    if args.train_size is not None:
        X = X[:args.train_size]
    shape = X.shape[1:]
    settings = _fit_settings(args)
    say(f"Fitting a {args.stencil}-neighbour {args.tying} grid Gaussian by {args.method} "
        f"to {len(X):,} images of {shape[0]}x{shape[1]} from {source} ...")
    start = time.perf_counter()
    model = GridGaussian(shape, **settings)
    model.fit(X.reshape(len(X), -1))
    seconds = time.perf_counter() - start
    model.save(out / "model.npz")
    from . import plotting
    figures = {"couplings.png": plotting.plot_couplings(model),
               "learning-curve.png": plotting.plot_learning_curve(
                   model.history_, exact_log_partition=(
                       model.log_partition_ if model.is_positive_definite_ else None))}
    if model.is_positive_definite_:
        figures["samples.png"] = plotting.plot_samples(
            model.sample(32, random_state=args.seed), shape,
            title=f"Samples of the fitted model ({args.method}, {args.stencil} neighbours)")
        say(f"Done in {seconds:.2f} s: mean log-likelihood {model.score(X.reshape(len(X), -1)):.3f} "
            f"nats/image, exact log Z {model.log_partition_:.3f}"
            + (f"; NCE's learned log Z {model.log_partition_estimate_:.3f} (noise ratio "
               f"nu = {model.nu_:g})" if hasattr(model, "log_partition_estimate_") else "")
            + ".")
    else:
        say(f"Done in {seconds:.2f} s, but the estimate is not positive definite: no samples "
            "or likelihoods (try --sm-solver barrier for score matching).")
    for filename, figure in figures.items():
        figure.savefig(out / filename, dpi=110)
    say(f"Wrote {out / 'model.npz'} and {', '.join(sorted(figures))}.")
    return EXIT_OK


def _fit_shards(args, out, say):
    """``fit DIR --shape H W``: exact MLE or score matching (closed form or barrier) from
    the directory's .npy shards (see sparsegauss.sources); the data are never loaded."""
    if args.shape is None:
        raise ValueError(f"{args.data} is a directory of shards: give the image shape with "
                         "--shape H W.")
    if args.noise_std is not None:
        raise ValueError("--noise-std applies to images loaded in memory; the shards in "
                         f"{args.data} are streamed and used as given. Drop --noise-std, "
                         "or add the noise when writing the shards.")
    shape = tuple(args.shape)
    say(f"Fitting a {args.stencil}-neighbour {args.tying} grid Gaussian by {args.method} "
        f"to the .npy shards in {args.data} ({shape[0]}x{shape[1]}), chunk by chunk ...")
    start = time.perf_counter()
    model = GridGaussian(shape, **_fit_settings(args)).fit(args.data)
    model.save(out / "model.npz")
    say(f"Done in {time.perf_counter() - start:.2f} s"
        + (f": exact log Z {model.log_partition_:.3f}." if model.is_positive_definite_
           else ", but the estimate is not positive definite.")
        + f" Wrote {out / 'model.npz'}.")
    return EXIT_OK


def _run_sample(args):
    if args.png is None and args.npy is None:
        raise ValueError("Nothing to write: give --png FILE and/or --npy FILE.")
    for option, target in (("--npy", args.npy), ("--png", args.png)):
        if target is not None:
            _check_target(target, option)
    model = GridGaussian.load(args.model)
    shape = model._grid.shape
    n_pixels = shape[0] * shape[1]
    if args.npy is not None:
        # Every sample is drawn in memory first; sample() refuses what cannot fit.
        samples = model.sample(args.n_samples, random_state=args.seed, method=args.sqrt)
        np.save(args.npy, samples.reshape(args.n_samples, *shape))
    if args.png is not None:
        n_shown = int(min(args.n_samples, PNG_MAX_SAMPLES, max(1, PNG_MAX_PIXELS // n_pixels)))
        if n_shown < args.n_samples:
            print(f"sparsegauss sample: the PNG shows the first {n_shown} of "
                  f"{args.n_samples:,} samples" + (" (all are in the .npy file)"
                                                   if args.npy is not None else "") + ".",
                  file=sys.stderr)
        shown = (samples[:n_shown] if args.npy is not None else
                 model.sample(n_shown, random_state=args.seed, method=args.sqrt))
        from .plotting import plot_samples
        title = (f"{args.n_samples} samples of {args.model.name}" if n_shown == args.n_samples
                 else f"{n_shown} of {args.n_samples:,} samples of {args.model.name}")
        plot_samples(shown, shape, title=title).savefig(args.png, dpi=110)
    return EXIT_OK


def _write_study(out, summary, figures):
    for filename, figure in figures.items():
        figure.savefig(out / filename, dpi=110)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "report.md").write_text(report.render_natural(summary))


def _demo_natural(args, out, say):
    """The reduced natural-image study into OUT/natural; its headline numbers for the
    demo's report (None when skipped or when scikit-image, which holds the photographs,
    is missing)."""
    if not args.natural_patches:
        return None
    from .natural import run_study
    from .photos import NATURAL_IMAGES, load_natural_images

    try:
        images = load_natural_images()
    except ImportError as exc:
        say(f"Natural-image study skipped: {exc}")
        return None
    say("Natural-image study (reduced; the full one: sparsegauss natural)")
    settings = dataclasses.replace(DEMO_NATURAL, n_patches=args.natural_patches,
                                   seed=args.seed)
    summary, figures = run_study(images, image_names=list(NATURAL_IMAGES),
                                 licences=list(NATURAL_IMAGES.values()), settings=settings,
                                 say=say)
    _write_study(_prepare_output(out / "natural"), summary, figures)
    main = next(r for r in summary["dem"] if r["model"] == summary["main_config"])
    auc = next(r for r in summary["discrimination"] if r["model"] == summary["main_config"])
    return dict(report="natural/report.md", n_patches=summary["images"]["n_patches"],
                seconds=summary["seconds"], model=main["model"],
                test_gain=main["test_gain"], train_gain=main["train_gain"],
                log_z_nce=main["log_z_nce"], log_z_ais=main["log_z_ais"],
                gaussian_test_loglik=summary["gaussian_test_loglik"],
                auc_gaussian=auc["auc_gaussian"], auc_mnist=auc.get("auc_mnist"))


def _run_natural(args):
    from .natural import run_study
    from .photos import (NATURAL_IMAGES, UnreadableImageError, load_images,
                         load_natural_images)

    out = _prepare_output(args.out)
    say = (lambda *a: None) if args.quiet else print
    max_side = args.max_side or None
    if args.images is None:
        images = load_natural_images(max_side=max_side)
        names, licences = list(NATURAL_IMAGES), list(NATURAL_IMAGES.values())
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                images, paths = load_images(
                    args.images, max_side=max_side,
                    on_error="skip" if args.skip_unreadable else "raise", return_paths=True)
            except UnreadableImageError as exc:
                raise UnreadableImageError(
                    exc.path, exc.reason,
                    " Pass --skip-unreadable to leave such files out.") from None
        for warning in caught:
            say(f"warning: {warning.message}")
        # The report names the user's files; by path where two share a name.
        names = [p.name for p in paths]
        if len(set(names)) < len(names):
            names = [str(p) for p in paths]
        licences = None
        say(f"Read {len(images)} photographs from {args.images}")
    settings = StudySettings(n_patches=args.n_patches, n_test=args.n_test,
                             patch_shape=(args.patch_size, args.patch_size),
                             dem_steps=args.steps, seed=args.seed)
    with warnings.catch_warnings():
        # The study's own warnings (a photograph too small for a patch) as one line on
        # stderr when they happen, like the reader's above, not Python's two-line form.
        warnings.showwarning = lambda message, *_: print(f"warning: {message}",
                                                          file=sys.stderr)
        summary, figures = run_study(images, image_names=names, licences=licences,
                                     settings=settings, say=say)
    _write_study(out, summary, figures)
    say(f"Wrote {out / 'report.md'}, {len(figures)} figures and summary.json "
        f"({summary['seconds']:.0f} s).")
    return EXIT_OK


def _run_info(args):
    from ._config import config, show_config

    if args.json:
        print(json.dumps(config(), indent=2))
    else:
        show_config()
    return EXIT_OK


def _run_bench(args):
    # The suite is not installed with the package: it is found in the current directory.
    if (Path.cwd() / "benchmarks" / "__main__.py").is_file() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError as exc:
        raise DataError("The benchmark suite lives in the source checkout (benchmarks/); "
                        "run 'sparsegauss bench' from the repository root.") from exc
    argv = ["--out", str(args.out)] + (["--quick"] if args.quick else [])
    if args.filter:
        argv += ["--filter", args.filter]
    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
