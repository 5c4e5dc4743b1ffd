"""``report.md`` of the MNIST study, written from the demo's measured summary.

Every number in the report comes from the ``summary`` dictionary the demo measured in
the same run; the text around them only states what the numbers mean.
"""

import math

from .normalization import LOG_2PI

__all__ = ["render"]


def _f(value, spec=".2f"):
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def _find(rows, estimator, stencil):
    for row in rows:
        if row["estimator"] == estimator and row["stencil"] == stencil:
            return row
    return None


def _results_table(rows):
    lines = ["| estimator | neighbours | fit time (s) | train LL | held-out LL | "
             "KL(MLE ‖ est.) | exact log Z | NCE log Z | PD |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        estimate = r.get("log_partition_estimate")
        z = "" if estimate is None else f"{estimate:.3f}"
        lines.append(f"| {r['estimator']} | {r['stencil']} | {_f(r['seconds'])} "
                     f"| {_f(r['train_loglik'])} | {_f(r['test_loglik'])} "
                     f"| {_f(r['kl_to_mle'], '.3f')} | {_f(r['log_partition'], '.3f')} | {z} "
                     f"| {'yes' if r['positive_definite'] else 'no'} |")
    return "\n".join(lines)


def _noise_section(noise_rows):
    if not noise_rows:
        return []
    lines = ["## Which noise for NCE", "",
             "NCE learns by telling data from noise, so the noise must be hard to tell "
             "apart from the data. Short NCE runs (Adam, 4 neighbours) with each noise:", "",
             "| noise | initial loss | final loss | held-out LL | log Z error (nats) |",
             "|---|---|---|---|---|"]
    for r in noise_rows:
        lines.append(f"| {r['estimator']} | {r['initial_loss']:.4f} | {r['final_loss']:.4g} "
                     f"| {_f(r['test_loglik'])} | {_f(r.get('log_partition_error'), '.3f')} |")
    chosen = [r for r in noise_rows if r["estimator"] == "grid-untied"]
    lines += ["",
              "A final loss far below the initial one means the classifier is separating "
              "data from noise: its log-ratio grows without bound and the estimate runs "
              "away (it need not even stay positive definite). The noise chosen by default "
              "(`noise=\"auto\"`) is `grid-untied`, the 4-neighbour untied grid Gaussian "
              "fitted by exact MLE: it matches the data's second moments on the 4-neighbour "
              "pattern, so the classifier starts balanced and stays so"
              + (f" (final loss {chosen[0]['final_loss']:.4f} against "
                 f"{chosen[0]['initial_loss']:.4f} at the start)." if chosen else "."),
              "",
              "Caveat: for the 4-neighbour model this noise *is* the model family's MLE "
              "and NCE starts at the noise, so its 4-neighbour estimate mostly measures "
              "how well NCE keeps the MLE and learns log Z; for the 8-neighbour model NCE "
              "must learn the diagonal couplings the noise lacks.", ""]
    return lines


def render(summary):
    """Markdown text of the report.

    Parameters
    ----------
    summary : dict
        As written by ``sparsegauss demo`` to ``summary.json``: ``source``,
        ``noise_std``, ``rows`` (one per fit) and ``noise_check``.
    """
    rows = summary["rows"]
    lines = ["# Grid Gaussians on MNIST", "",
             f"Data: {summary['source']}; pixels scaled to [0, 1], N(0, "
             f"{summary['noise_std']}²) noise added, mean subtracted; D = 784. Log-likelihoods "
             "are exact (nats per image, sparse Cholesky); KL is to the exact MLE of the same "
             "stencil.", "", "## Results", "", _results_table(rows), "",
             "![comparison](comparison.png)", ""]

    mle4, mle8 = _find(rows, "mle", 4), _find(rows, "mle", 8)
    if mle4 and mle8:
        gain = mle8["test_loglik"] - mle4["test_loglik"]
        lines += ["## 8 neighbours against 4", "",
                  f"Exact MLE, held-out: {mle8['test_loglik']:.2f} nats/image with 8 "
                  f"neighbours against {mle4['test_loglik']:.2f} with 4, a gain of "
                  f"{gain:.2f} nats per image from the diagonal couplings "
                  f"({'they generalize' if gain > 0 else 'they overfit'}).", "",
                  "![4-neighbour couplings](couplings-4.png)", "",
                  "![8-neighbour couplings](couplings-8.png)", ""]

    nce_rows = [r for r in rows if r.get("log_partition_estimate") is not None]
    if nce_rows:
        lines += ["## NCE's log Z against the truth", "",
                  "With `normalization=\"learned\"` NCE treats log Z as a free parameter. "
                  "The exact value for its own estimate Λ̂ is (D/2) log 2π + ½ log |Σ̂| = "
                  "(D/2) log 2π − ½ log det Λ̂, from the sparse Cholesky factor "
                  f"((D/2) log 2π = {0.5 * 784 * LOG_2PI:.3f} for D = 784).", ""]
        for r in nce_rows:
            if math.isnan(r["log_partition"]):
                lines.append(f"- {r['stencil']} neighbours: learned {r['log_partition_estimate']:.3f}, "
                             "but the estimate is not positive definite, so there is no exact value.")
                continue
            error = r["log_partition_error"]
            lines.append(f"- {r['stencil']} neighbours: learned {r['log_partition_estimate']:.3f}"
                         f", exact {r['log_partition']:.3f}: error {error:+.3f} nats, "
                         f"{error / (r['n_params'] / r['n_train']):+.2f} p/N.")
        lines += ["", "Learning curves (objective, and the log Z estimate against the exact "
                  "value of the final estimate):", ""]
        lines += [f"![NCE, {r['stencil']} neighbours](nce-curve-{r['stencil']}.png)"
                  for r in nce_rows] + [""]

    lines += _noise_section(summary.get("noise_check", []))

    cd_rows = [r for r in rows if r["estimator"] == "cd"]
    if cd_rows:
        lines += ["## Contrastive divergence", "",
                  "CD follows the likelihood's gradient with the model's expectation replaced "
                  "by an average over negative samples. At its defaults those are exact "
                  "samples of the current estimate from its sparse Cholesky factor (the "
                  "limit of infinitely many Gibbs sweeps; CD-1 from the data, the textbook "
                  "choice, ended tens of nats from the MLE with a degenerate Λ), with Adam "
                  "and a cosine-annealed step over 4,000 minibatches of 256:", ""]
        for r in cd_rows:
            lines.append(f"- {r['stencil']} neighbours: held-out {_f(r['test_loglik'])} "
                         f"nats/image, KL to the MLE {_f(r['kl_to_mle'], '.3f')}, "
                         f"{r['seconds']:.2f} s, "
                         + ("positive definite." if r["positive_definite"]
                            else "**not** positive definite."))
        lines += ["", "It is slower than the exact MLE here because every step draws and "
                  "scores a minibatch of negative samples, where the MLE reads the "
                  "model's covariance on the pattern from one selected inversion.", ""]

    sm_rows = [r for r in rows if r["estimator"].startswith("sm")]
    if sm_rows:
        lines += ["## Score matching", ""]
        closed = [r for r in sm_rows if r["estimator"] == "sm closed form"]
        if closed:
            lines += ["Score matching's objective is quadratic in θ, so its minimizer is one "
                      "sparse linear solve; on MNIST that minimizer is **not positive "
                      "definite** "
                      f"({', '.join(str(r['stencil']) for r in closed)} neighbours): it is "
                      "not a Gaussian, and has no likelihood, samples or log Z: nothing "
                      "in the score-matching objective keeps Λ inside the positive-definite "
                      "cone. The demo then takes the log-barrier path "
                      "(`sm_solver=\"barrier\"`): minimize J(θ) − t log det Λ(θ) with t "
                      "driven to 0, which returns the best positive-definite estimate:", ""]
        for r in sm_rows:
            if r["estimator"] != "sm closed form":
                lines.append(f"- {r['estimator']}, {r['stencil']} neighbours: held-out "
                             f"{_f(r['test_loglik'])} nats/image, KL to the MLE "
                             f"{_f(r['kl_to_mle'], '.3f')}, {r['seconds']:.2f} s.")
        lines.append("")

    fastest = sorted((r for r in rows if r["positive_definite"]), key=lambda r: r["seconds"])
    if fastest:
        lines += ["## Accuracy and time", "",
                  "Times are wall-clock seconds of `fit` alone: a warm-up fit of every "
                  "method on a 6×6 grid runs first, so no row pays for Numba's one-off "
                  "compilation. Positive-definite estimates, fastest first: "
                  + "; ".join(f"{r['estimator']} ({r['stencil']}): {r['seconds']:.2f} s, "
                              f"KL {r['kl_to_mle']:.3f}" for r in fastest) + ".",
                  "Exact MLE is both the reference and, here, the fastest: log Z is "
                  "tractable for grid Gaussians, which is what makes this a testbed for the "
                  "estimators designed for models where it is not.", ""]

    lines += ["## Samples", "",
              "x = μ + Aε with A from the sparse Cholesky factor, and with the symmetric "
              "square root Σ^{1/2}: the two rows are draws from the same distribution.", ""]
    lines += [f"![samples, {s} neighbours](samples-{s}.png)" for s in (4, 8)
              if f"samples-{s}.png" in summary.get("figures", [])]
    return "\n".join(lines) + "\n"
