"""``report.md`` of the studies, written from their measured summaries.

:func:`render` writes the MNIST study's (``sparsegauss demo``), :func:`render_natural`
the natural-image study's (``sparsegauss natural``). Every number in a report comes from
the ``summary`` dictionary measured in the same run; the text around them only states
what the numbers mean, and its verdicts are computed from them.
"""

import math

from .normalization import LOG_2PI

__all__ = ["render", "render_natural"]


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
             "KL(MLE ‖ est.) | exact log Z | NCE log Z | PD | converged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        estimate = r.get("log_partition_estimate")
        z = "" if estimate is None else f"{estimate:.3f}"
        lines.append(f"| {r['estimator']} | {r['stencil']} | {_f(r['seconds'])} "
                     f"| {_f(r['train_loglik'])} | {_f(r['test_loglik'])} "
                     f"| {_f(r['kl_to_mle'], '.3f')} | {_f(r['log_partition'], '.3f')} | {z} "
                     f"| {'yes' if r['positive_definite'] else 'no'} "
                     f"| {'yes' if r.get('converged') else 'no'} |")
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
              "away (it need not even stay positive definite). `grid-untied`, the "
              "4-neighbour untied grid Gaussian fitted by exact MLE (the library's default "
              "noise until 2026-12-01), matches the data's second moments on the "
              "4-neighbour pattern, so the classifier starts balanced and stays so"
              + (f" (final loss {chosen[0]['final_loss']:.4f} against "
                 f"{chosen[0]['initial_loss']:.4f} at the start)." if chosen else "."),
              "",
              "But for the 4-neighbour model that noise *is* the model family's MLE and NCE "
              "starts at it, so the estimate would mostly measure how well NCE keeps an "
              "answer it was handed; for the 8-neighbour model the classifier tells it from "
              "the data by the diagonal couplings it lacks (the estimator table in "
              "sparsegauss's docs/performance.md). "
              "That is why NCE's default (`noise=\"auto\"`), and the NCE rows above, use "
              "the adaptive noise, which is given only the pixel variances.", ""]
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
                  "NCE here is given nothing but the data: its noise starts as N(0, diag S) "
                  "(the pixel variances), is replaced by a frozen copy of the current "
                  "estimate at every step of the first 2,500 of its 3,500 Adam steps "
                  "(stochastic maximum likelihood with the model's exact expectation), "
                  "then stays fixed for the last 1,000, where NCE learns log Z against it "
                  "(`noise=\"adaptive\"`). "
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

    lines += _natural_headline(summary.get("natural"))

    lines += ["## Samples", "",
              "x = μ + Aε with A from the sparse Cholesky factor, and with the symmetric "
              "square root Σ^{1/2}: the two rows are draws from the same distribution.", ""]
    lines += [f"![samples, {s} neighbours](samples-{s}.png)" for s in (4, 8)
              if f"samples-{s}.png" in summary.get("figures", [])]
    return "\n".join(lines) + "\n"


def _natural_headline(natural):
    """The demo's section on its reduced natural-image study (full report linked)."""
    if not natural:
        return []
    verdict = "above" if natural["test_gain"] > 0 else "below"
    lines = ["## Natural images (reduced study)", "",
             f"A two-layer deep energy model ({natural['model']}, NCE against the grid "
             f"Gaussian) on {natural['n_patches']:,} patches of the bundled photographs, "
             f"{natural['seconds']:.0f} s: held-out patches from other photographs score "
             f"{abs(natural['test_gain']):.2f} nats per patch {verdict} the 4-neighbour grid "
             f"Gaussian ({natural['train_gain']:+.2f} on its training patches), with log Z "
             f"by AIS ({natural['log_z_ais']:.2f}; NCE learned {_f(natural['log_z_nce'])}). "
             f"ROC AUC natural vs samples of the Gaussian {natural['auc_gaussian']:.3f}"
             + (f", natural vs MNIST digits {natural['auc_mnist']:.3f}"
                if natural.get("auc_mnist") is not None else "")
             + f". Everything else (filters, modes, the raw-pixel model): "
             f"[{natural['report']}]({natural['report']}); the full study is "
             "`sparsegauss natural`.", ""]
    return lines


def _mean_std(cell):
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}" if cell else "—"


def _natural_gaussian_table(rows):
    lines = ["| estimator | neighbours | fit time (s) | train LL | held-out LL | "
             "KL(MLE ‖ est.) | PD | converged |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        converged = r.get("converged")
        lines.append(f"| {r['estimator']} | {r['stencil']} | {_f(r['seconds'])} "
                     f"| {_f(r.get('train_loglik'))} | {_f(r.get('test_loglik'))} "
                     f"| {_f(r.get('kl_to_mle'), '.3f')} "
                     f"| {'yes' if r['positive_definite'] else 'no'} "
                     f"| {'—' if converged is None else 'yes' if converged else 'no'} |")
    unfinished = [r for r in rows if r.get("converged") is False]
    if unfinished:
        lines += ["", "Fits not marked converged, with what each one said:", ""]
        lines += [f"- {r['estimator']}, {r['stencil']} neighbours: "
                  + (" ".join(r.get("warnings") or []) or "no warning was raised.")
                  for r in unfinished]
    return lines


def _natural_dem_table(rows):
    lines = ["| DEM | fit time (s) | log Z: NCE | log Z: IS (ESS) | log Z: AIS | "
             "train LL − Gaussian | held-out LL − Gaussian | filter locality | "
             "converged |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['seconds']:.1f} | {_f(r['log_z_nce'])} "
            f"| {r['log_z_importance']:.2f} ± {r['log_z_importance_stderr']:.2f} "
            f"({r['importance_ess']:.0f}) | {r['log_z_ais']:.2f} ± {r['log_z_ais_stderr']:.2f} "
            f"| {r['train_gain']:+.2f} | {r['test_gain']:+.2f} | {r['filter_locality']:.2f} "
            f"| {'yes' if r['converged'] else 'no'} |")
    return lines


def _other_dems_verdict(others, gaussian_train_loglik, gaussian_test_loglik):
    """What the DEMs on raw pixels or with σ ≠ 1 show against the Gaussian: below it, the
    reason (which is the usual outcome); above it, that the Gaussian itself fits the
    held-out photographs badly, which the comparison then measures (on photographs far
    from the training ones, e.g. quantized differently, the whitened Gaussian can lose
    tens of thousands of nats a patch that a model with bounded terms does not)."""
    best = max(others, key=lambda r: r["test_gain"])
    worst = min(others, key=lambda r: r["test_gain"])
    why = ("On raw pixels the DEM's only Gaussian part is isotropic, −‖x − μ‖²/(2σ²), and "
           "its softplus terms are bounded, so it cannot hold the strong correlations of "
           "neighbouring pixels; on whitened patches σ = 0.1 is ten times narrower than "
           "the data.")
    if best["test_gain"] <= 0:          # none above the Gaussian (a tie reads as below)
        return (f"{why} These fits lie {abs(best['test_gain']):.0f} ({best['model']}) to "
                f"{abs(worst['test_gain']):.0f} ({worst['model']}) nats per patch below the "
                "Gaussian on held-out patches. Whitening with the grid Gaussian is what "
                "lets the DEM spend its units on what the Gaussian misses.")
    above = [r["model"] for r in others if r["test_gain"] > 0]
    return (f"{why} On held-out patches these fits range from {worst['test_gain']:+.0f} "
            f"({worst['model']}) to {best['test_gain']:+.0f} ({best['model']}) nats per "
            f"patch against the Gaussian; {', '.join(above)} "
            f"{'lies' if len(above) == 1 else 'lie'} above it. Read it with the "
            f"Gaussian's own scores: {gaussian_train_loglik:.0f} nats per patch on its "
            f"training patches and {gaussian_test_loglik:.0f} on the held-out ones. Where "
            "the two differ by far more than the DEMs' gains, the held-out photographs "
            "differ from the training ones in what the whitened Gaussian is sharpest on "
            "(fine-scale structure, quantization, noise), a model with bounded terms loses "
            "less there, and the comparison says more about the photographs than about the "
            "models: compare them on held-out photographs like the training ones.")


def _natural_verdicts(summary):
    dem = {r["model"]: r for r in summary["dem"]}
    main = dem[summary["main_config"]]
    lines = []
    verdict = "beats" if main["test_gain"] > 0 else "does not beat"
    lines.append(
        f"**Does the DEM beat the Gaussian on held-out patches?** The {main['model']} DEM "
        f"{verdict} the 4-neighbour grid Gaussian: {main['test_gain']:+.2f} nats per patch on "
        f"patches of photographs it never saw ({main['train_gain']:+.2f} on its training "
        f"patches), with log Z from AIS ({main['log_z_ais']:.2f} ± "
        f"{main['log_z_ais_stderr']:.2f}).")
    if main["train_gain"] > 0 > main["test_gain"]:
        lines.append(
            "What it learns beyond the Gaussian holds on its own photographs and not on "
            "others: with a few photographs, the non-Gaussian structure of one set of "
            "scenes (textures, particular edges) does not carry over.")
    if main["log_z_nce"] is not None:
        gap = main["log_z_nce"] - main["log_z_ais"]
        lines.append(
            f"NCE's learned log Z is {gap:+.2f} nats from AIS's. Read with NCE's own log Z, "
            f"the held-out gain would be {main['test_gain'] - gap:+.2f} nats per patch: "
            "NCE's log Z is biased low by about p/N (p parameters, N patches), and an "
            "estimate of log Z that does not come from the fit is what makes the comparison "
            "honest.")
    failed = [r["model"] for r in summary["dem"] if not r["converged"]]
    others = [r for r in summary["dem"]
              if r["whitening"] is None or r["sigma"] != 1.0]
    if others:
        baseline = next(r for r in summary["gaussian"]
                        if r["estimator"] == "mle" and r["stencil"] == 4)
        lines.append(_other_dems_verdict(others, baseline["train_loglik"],
                                         summary["gaussian_test_loglik"]) + (
            f" NCE did not converge for {', '.join(failed)} (its loss ended above that "
            "of a classifier that knows nothing: the model never came near its noise)."
            if failed else ""))
    local = main["filter_locality"]
    lines.append(
        f"**Filters.** A median {local:.0%} of each {main['model']} filter's energy lies in "
        "the 7 × 7 square around its peak (a filter spread evenly over the patch: "
        f"{49 / 784:.0%}); " + (
            "they are localized, as the natural-image literature's edge-like filters are; "
            "look at the figure for their orientation." if local > 0.4 else
            "they are not localized: most energy lies outside the peak's neighbourhood, "
            "unlike the localized, oriented edge filters of the natural-image literature."))
    return lines


def render_natural(summary):
    """Markdown text of the natural-image study's report."""
    images, settings = summary["images"], summary["settings"]
    licences = images.get("licences")
    listed = ", ".join(f"{n} ({lic})" for n, lic in zip(images["names"], licences)) \
        if licences else ", ".join(images["names"])
    shape = "×".join(str(s) for s in images["patch_shape"])
    lines = [
        "# sparsegauss — the natural-image study", "",
        f"Run time {summary['seconds']:.0f} s. Every number below was measured in this run.",
        "",
        "## Patches", "",
        f"Photographs: {listed}." + (
            f" Left out, smaller than a patch: {', '.join(images['too_small'])}."
            if images.get("too_small") else ""), "",
        f"{images['n_patches']:,} training patches of {shape} pixels from "
        f"{', '.join(images['train'])}; {images['n_test']:,} held-out patches from "
        f"{', '.join(images['test'])} (split by photograph, so no held-out patch comes from a "
        f"photograph seen in training). Greyscale in [0, 1]: mean {images['mean']:.3f}, "
        f"std {images['std']:.3f}. Extraction took {images['patch_seconds']:.2f} s.",
        "", "![training patches](patches.png)", "",
        "## The grid Gaussian of the patches", "",
        "Exact maximum likelihood, NCE and score matching, each at its defaults "
        "(held-out LL in nats per patch, on the held-out photographs). NCE's default "
        "noise is adaptive and given only the pixel variances; on patches its Adam steps "
        "do not reach the data (the MLE's condition number is about 4·10⁴), which its row "
        "says. The rows \"nce 4-nbr MLE noise\" are NCE given the 4-neighbour MLE as "
        "its noise: the 4-neighbour one starts at the answer and shows how well NCE keeps "
        "it; the 8-neighbour one must learn the diagonal couplings from that noise. Each "
        "fit's convergence is checked, not trusted (NCE against the exact likelihood's "
        "Newton decrement).", ""]
    lines += _natural_gaussian_table(summary["gaussian"])
    lines += ["", f"The 4-neighbour MLE is the baseline below (held-out "
              f"{summary['gaussian_test_loglik']:.2f} nats per patch); it is also the DEM's "
              "whitening map and NCE noise.", "",
              "![Gaussian samples](gaussian-samples.png)", "",
              "![couplings, 4 neighbours](couplings-4.png)", "",
              "![couplings, 8 neighbours](couplings-8.png)", "",
              "## The deep energy model", "",
              f"log p̃(z) = −‖z‖²/(2σ²) + bᵀz + Σ_k S(w_kᵀ s(Vz) + c_k), H = "
              f"{settings['n_hidden']}, K = {settings['n_units']}, "
              f"{settings['dem_steps']:,} Adam steps; z is the patch whitened by the grid "
              "Gaussian (z = Λ^{1/2}(x − μ)) or only centred (raw). Log-likelihoods are in "
              "pixel space (the whitening's log-Jacobian included) with log Z by annealed "
              f"importance sampling ({settings['ais_chains']} chains, "
              f"{settings['ais_temperatures']} temperatures, from the model's Gaussian term); "
              "IS is plain importance sampling from a mixture of the fitted Gaussian and "
              "the model's Gaussian term (effective sample size in brackets). "
              "\"Filter locality\": median share of a filter's energy within 7 × 7 "
              "pixels of its peak.", ""]
    lines += _natural_dem_table(summary["dem"])
    lines += [""] + [line + "\n" for line in _natural_verdicts(summary)]
    for name in summary["figures"]:
        if name.startswith("filters-"):
            lines += [f"![{name[8:-4]}]({name})", ""]
    lines += ["## Can the models tell natural patches from Gaussian samples and digits?", "",
              "log p (nats per patch, pixel space) of held-out natural patches, samples of "
              "the fitted 4-neighbour Gaussian and MNIST digits (bundled test images in "
              "[0, 1]); ROC AUC of telling natural patches from each, with log p as the "
              "score (0.5: cannot tell; 1: always higher on natural patches; 0: always "
              "lower).", ""]
    has_mnist = summary["mnist"]
    header = "| model | natural | Gaussian samples |" + (" MNIST |" if has_mnist else "") + \
        " AUC natural vs Gaussian |" + (" AUC natural vs MNIST |" if has_mnist else "")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for r in summary["discrimination"]:
        cells = [r["model"], _mean_std(r["natural (held out)"]), _mean_std(r["Gaussian samples"])]
        if has_mnist:
            cells.append(_mean_std(r["MNIST digits"]))
        cells.append(f"{r['auc_gaussian']:.3f}")
        if has_mnist:
            cells.append(f"{r['auc_mnist']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    gauss_row = summary["discrimination"][0]
    main_row = next(r for r in summary["discrimination"] if r["model"] == summary["main_config"])

    def direction(auc):
        return ("higher on natural patches" if auc > 0.5 else
                "higher on the other set" if auc < 0.5 else "no better than chance")

    lines += ["", (
        f"The grid Gaussian gives its own samples "
        f"{'higher' if gauss_row['auc_gaussian'] < 0.5 else 'lower'}"
        f" log p than held-out natural patches (AUC {gauss_row['auc_gaussian']:.3f}): its "
        "samples are typical for it, while natural patches range from flat sky (very "
        "probable) to texture and edges (improbable), hence their large spread. The "
        f"{summary['main_config']} DEM's AUC is {main_row['auc_gaussian']:.3f}: its log p is "
        "the Gaussian's plus a term whose spread is small against the Gaussian's, so it "
        "ranks patches almost as the Gaussian does."), ""]
    if has_mnist:
        for r in summary["discrimination"]:
            lines.append(f"- {r['model']}: natural vs MNIST AUC {r['auc_mnist']:.3f}, "
                         f"log p {direction(r['auc_mnist'])}.")
        lines += ["", "A model of photographs that scores digits (flat black backgrounds "
                  "with bright strokes) above natural patches has learned something wrong "
                  "about images; AUC near 1 is the expected answer.", ""]
    else:
        lines += ["MNIST digits are 28 × 28; this run's patches are not, so they were not "
                  "scored.", ""]
    modes = summary["modes"]
    lines += ["## Modes and samples", "",
              f"Gradient ascent on log p of the {modes['model']} DEM (step σ²/2) from 16 "
              f"samples of the Gaussian: {modes['n_steps']} steps, {modes['seconds']:.2f} s; "
              f"log p rose from {_mean_std(modes['start_logp'])} to "
              f"{_mean_std(modes['mode_logp'])} nats; {modes['distinct']} distinct modes.", "",
              "![modes](dem-modes.png)", "", "![DEM samples](dem-samples.png)", "",
              "## Learning curves", "", "![learning curves](dem-curves.png)", ""]
    return "\n".join(lines)
