"""Figures of fitted grid Gaussians (matplotlib; ``pip install sparsegauss[plot]``).

Every function builds a :class:`matplotlib.figure.Figure` without pyplot (no global
state, no display needed) and returns it; save it with ``fig.savefig(path)``.
"""

import numpy as np

__all__ = ["plot_comparison", "plot_couplings", "plot_filters", "plot_learning_curve",
           "plot_learning_curves",
           "plot_samples", "plot_sampler_comparison"]


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("sparsegauss.plotting needs matplotlib: pip install "
                          "'sparsegauss[plot]'.") from exc
    return Figure(figsize=(width, height), layout="constrained")


def _image_grid(ax, images, shape, n_cols, limits):
    """Tile images into one array (one-pixel gaps) and show it in grey."""
    height, width = shape
    n_rows = -(-len(images) // n_cols)
    canvas = np.full((n_rows * (height + 1) - 1, n_cols * (width + 1) - 1), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, n_cols)
        canvas[r * (height + 1):r * (height + 1) + height,
               c * (width + 1):c * (width + 1) + width] = image.reshape(shape)
    shown = ax.imshow(canvas, cmap="gray", vmin=limits[0], vmax=limits[1],
                      interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _limits(*arrays):
    """Shared grey scale: the 1st and 99th percentiles, so one outlier does not wash out."""
    values = np.concatenate([np.ravel(a) for a in arrays])
    return tuple(np.percentile(values, [1, 99]))


def plot_samples(images, shape, *, n_cols=8, title="Samples"):
    """A grid of images (samples or data), on one shared grey scale with a colour bar.

    Parameters
    ----------
    images : array-like, shape (n, H * W) or (n, H, W)
    shape : (int, int)
    n_cols : int, default=8
    title : str
    """
    images = np.asarray(images, dtype=float).reshape(len(images), -1)
    n_cols = min(n_cols, len(images))
    n_rows = -(-len(images) // n_cols)
    fig = _figure(1.0 + 1.1 * n_cols, 0.6 + 1.1 * n_rows)
    ax = fig.add_subplot()
    shown = _image_grid(ax, images, shape, n_cols, _limits(images))
    fig.colorbar(shown, ax=ax, shrink=0.8, label="pixel value")
    ax.set_title(title)
    return fig


def plot_filters(filters, *, n_cols=16, title="Filters"):
    """Filters (rows of a first layer) as images, each scaled to its own largest
    magnitude (black −1, grey 0, white +1): a filter's sign and shape matter, not its
    norm.

    Parameters
    ----------
    filters : array-like, shape (n, H, W)
    """
    filters = np.asarray(filters, dtype=float)
    if filters.ndim != 3:
        raise ValueError(f"filters must have shape (n, H, W); got {filters.shape}.")
    peak = np.abs(filters).reshape(len(filters), -1).max(axis=1)
    scaled = filters / np.where(peak > 0, peak, 1.0)[:, None, None]
    n_cols = min(n_cols, len(filters))
    n_rows = -(-len(filters) // n_cols)
    fig = _figure(0.8 + 0.75 * n_cols, 0.6 + 0.75 * n_rows)
    ax = fig.add_subplot()
    _image_grid(ax, scaled.reshape(len(scaled), -1), filters.shape[1:], n_cols, (-1.0, 1.0))
    ax.set_title(title)
    return fig


def plot_sampler_comparison(model, n_samples=16, random_state=0, n_cols=8):
    """Samples ``x = μ + Aε`` with the Cholesky ``A`` and the symmetric ``A = Σ^{1/2}``.

    Both square roots satisfy ``A Aᵀ = Σ``, so the two panels are draws from one
    distribution (on a shared grey scale); the symmetric one needs a dense
    eigendecomposition and is only available for ``D ≤ 4096``.
    """
    shape = model._grid.shape
    cholesky = model.sample(n_samples, random_state=random_state, method="cholesky")
    symmetric = model.sample(n_samples, random_state=random_state, method="symmetric")
    limits = _limits(cholesky, symmetric)
    n_cols = min(n_cols, n_samples)
    n_rows = -(-n_samples // n_cols)
    fig = _figure(1.0 + 1.1 * n_cols, 1.2 + 2.3 * n_rows)
    axes = fig.subplots(2, 1)
    for ax, images, label in ((axes[0], cholesky, "A = Pᵀ L⁻ᵀ (sparse Cholesky)"),
                              (axes[1], symmetric, r"A = $\Sigma^{1/2}$ (dense, symmetric)")):
        shown = _image_grid(ax, images, shape, n_cols, limits)
        ax.set_title(f"x = μ + A ε,  {label}")
    fig.colorbar(shown, ax=axes, shrink=0.8, label="pixel value")
    fig.suptitle(f"Samples of the {model._grid.stencil}-neighbour model, two square roots "
                 "of Σ")
    return fig


def plot_couplings(model, title=None):
    """The fitted precision as images: the diagonal, then one map per stencil offset.

    Each map holds ``Λ[p, p+δ]`` at the pixel ``p`` that owns the pair. Couplings use a
    red–blue scale centred at zero (shared by all offsets, so they compare); the
    diagonal, positive, its own scale.
    """
    couplings = model.couplings()
    names = list(couplings)
    off_diagonal = [couplings[n] for n in names[1:]]
    bound = max(float(np.max(np.abs(c))) for c in off_diagonal) if off_diagonal else 1.0
    fig = _figure(2.6 * len(names) + 0.8, 3.0)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    offsets = dict(zip(names, model._grid.offsets))
    for ax, name in zip(axes, names):
        if name == names[0]:
            shown = ax.imshow(couplings[name], cmap="viridis", interpolation="nearest")
            fig.colorbar(shown, ax=ax, shrink=0.7, label="precision")
            ax.set_title("diagonal\nΛ[p, p]")
        else:
            shown = ax.imshow(couplings[name], cmap="RdBu_r", vmin=-bound, vmax=bound,
                              interpolation="nearest")
            dr, dc = offsets[name]
            ax.set_title(f"{name}\nΛ[p, p+({dr},{dc})]")
        ax.set_xticks([])
        ax.set_yticks([])
    if len(names) > 1:
        fig.colorbar(shown, ax=list(axes[1:]), shrink=0.7, label="coupling (0 = white)")
    title = title or (f"Fitted precision Λ ({model._grid.stencil}-neighbour, "
                      f"{model._grid.tying})")
    if not model.is_positive_definite_:
        # Not a precision matrix at all: the title must not suggest it is one.
        title += ("\nNOT POSITIVE DEFINITE: not a valid Gaussian (no density, no samples); "
                  "shown as estimated")
    fig.suptitle(title, color="k" if model.is_positive_definite_ else "darkred")
    return fig


def plot_learning_curve(history, *, exact_log_partition=None, x="iteration", title=None):
    """Loss per iteration (or second) and, for NCE, the log Z estimate against the truth.

    Parameters
    ----------
    history : list of dict
        A fitted model's ``history_``.
    exact_log_partition : float, optional
        Exact log Z of the final estimate, drawn as a horizontal line.
    x : {"iteration", "time"}
    """
    if not history:
        raise ValueError("The history is empty: fit the model first.")
    if x not in ("iteration", "time"):
        raise ValueError(f"x must be 'iteration' or 'time'. Got {x!r} instead.")
    steps = np.array([row[x] for row in history], dtype=float)
    loss = np.array([row["loss"] for row in history], dtype=float)
    estimates = [row.get("log_partition_estimate") for row in history]
    has_z = any(e is not None for e in estimates)
    fig = _figure(10.0 if has_z else 5.5, 3.6)
    axes = fig.subplots(1, 2 if has_z else 1, squeeze=False)[0]
    # NCE's adaptive noise reports two objectives (sparsegauss.estimators.adaptive): the
    # exact negative log-likelihood while the noise adapts, NCE's loss against the fixed
    # noise after. Different units, so each gets its own axis.
    adapting = np.array([bool(row.get("adapting", False)) for row in history])
    if adapting.any() and not adapting.all():
        axes[0].plot(steps[adapting], loss[adapting], lw=1, color="C1")
        axes[0].set_ylabel("−mean log-likelihood (nats), adapting the noise", color="C1",
                           fontsize="small")
        fixed = axes[0].twinx()
        fixed.plot(steps[~adapting], loss[~adapting], lw=1, color="C0")
        fixed.set_ylabel("NCE loss, fixed noise", color="C0", fontsize="small")
        axes[0].axvline(steps[~adapting][0], color="k", ls=":", lw=1)
    else:
        axes[0].plot(steps, loss, lw=1)
        axes[0].set_ylabel("loss")
    axes[0].set_xlabel("iteration" if x == "iteration" else "wall time (s)")
    axes[0].set_title("Objective")
    axes[0].grid(alpha=0.3)
    if has_z:
        z = np.array([np.nan if e is None else e for e in estimates], dtype=float)
        axes[1].plot(steps, z, lw=1, label="learned log Z (NCE)")
        if exact_log_partition is not None:
            axes[1].axhline(exact_log_partition, color="k", ls="--", lw=1,
                            label=f"exact log Z of the estimate ({exact_log_partition:.2f})")
        axes[1].set_xlabel(axes[0].get_xlabel())
        axes[1].set_ylabel("log Z (nats)")
        axes[1].set_title("Normalization")
        axes[1].legend(fontsize="small")
        axes[1].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_learning_curves(histories, *, n_cols=3, title=None):
    """One panel per fit: its loss against the step (``history_`` of each model).

    Parameters
    ----------
    histories : dict
        Name -> list of dicts with ``iteration`` and ``loss``.
    """
    if not histories:
        raise ValueError("No histories to plot.")
    n_cols = min(n_cols, len(histories))
    n_rows = -(-len(histories) // n_cols)
    fig = _figure(3.6 * n_cols, 2.6 * n_rows + 0.4)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (name, history) in zip(axes, histories.items()):
        steps = np.array([row["iteration"] for row in history], dtype=float)
        loss = np.array([row["loss"] for row in history], dtype=float)
        ax.plot(steps, loss, lw=0.6)
        # Minibatch losses are noisy: a running median over 50 steps shows the trend.
        if len(loss) > 100:
            window = np.lib.stride_tricks.sliding_window_view(loss, 50)
            ax.plot(steps[49:], np.median(window, axis=1), lw=1.2, color="k")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    for ax in axes[len(histories):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def plot_comparison(rows, title="Estimators on MNIST"):
    """Held-out log-likelihood against the exact MLE's, and NCE's log Z error.

    The left panel shows each estimator's held-out log-likelihood minus the exact MLE's
    of the same stencil: bars start at zero, so their lengths are the differences in
    nats per image (the absolute values differ by a few nats out of several hundred,
    which bars of absolute values with a cut axis would exaggerate). An estimate that is
    not positive definite has no likelihood and is marked "not PD". The right panel shows
    ``|learned − exact| log Z`` for the estimators that learn log Z (NCE).

    Parameters
    ----------
    rows : list of dict
        Keys ``estimator``, ``stencil``, ``test_loglik`` (nan when the estimate is not
        positive definite), and optionally ``log_partition_error`` (NCE). The reference
        rows have ``estimator == "mle"``.
    """
    estimators = [e for e in dict.fromkeys(r["estimator"] for r in rows) if e != "mle"]
    stencils = sorted({r["stencil"] for r in rows})
    value = {(r["estimator"], r["stencil"]): r for r in rows}
    reference = {s: value.get(("mle", s), {}).get("test_loglik", np.nan) for s in stencils}
    learned = [e for e in estimators
               if any("log_partition_error" in value.get((e, s), {}) for s in stencils)]
    fig = _figure(11.0, 4.6)
    axes = fig.subplots(1, 2, width_ratios=[max(len(estimators), 1), max(len(learned), 1) + 1])
    width = 0.8 / len(stencils)
    colours = [f"C{j}" for j in range(len(stencils))]
    for j, stencil in enumerate(stencils):
        offset = (j - (len(stencils) - 1) / 2) * width
        for i, name in enumerate(estimators):
            row = value.get((name, stencil))
            if row is None:
                continue
            delta = row.get("test_loglik", np.nan) - reference[stencil]
            if np.isfinite(delta):
                axes[0].bar(i + offset, delta, width, color=colours[j])
            else:
                # Below the zero line, inside the axes (the differences are mostly < 0).
                axes[0].text(i + offset, 0, " not PD", rotation=90, ha="center",
                             va="top", fontsize="small", color=colours[j])
        for i, name in enumerate(learned):
            error = value.get((name, stencil), {}).get("log_partition_error", np.nan)
            if np.isfinite(error):
                axes[1].bar(i + offset, abs(error), width, color=colours[j])
    axes[0].axhline(0, color="k", lw=0.8)
    mle_text = ", ".join(f"{s} nbrs {reference[s]:.1f}" for s in stencils
                         if np.isfinite(reference[s]))
    axes[0].set_ylabel("held-out log-lik. − exact MLE's (nats/image)")
    axes[0].set_title(f"Held-out log-likelihood relative to the MLE\n(MLE: {mle_text})",
                      fontsize="medium")
    axes[0].set_xticks(range(len(estimators)), estimators, rotation=20, ha="right")
    axes[1].set_ylabel("|learned − exact| log Z (nats)")
    axes[1].set_title("Learned log Z: error", fontsize="medium")
    axes[1].set_xticks(range(len(learned)), learned, rotation=20, ha="right")
    axes[1].set_xlim(-0.6, max(len(learned), 1) - 0.4)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch
    fig.legend([Patch(color=c) for c in colours], [f"{s} neighbours" for s in stencils],
               loc="outside lower center", ncols=len(stencils), fontsize="small")
    fig.suptitle(title)
    return fig
