"""The figures of one study (PNG, DVC plots), drawn by the evaluate stage from the results and
curves it has just written; matplotlib is imported here only.

Files (layout.FIGURES): effects_forest.png (every effect ± its 95% interval, a zero line),
learning_curves.png (mean over seeds, band = min..max over seeds),
test_accuracy.png (mean ± 95% CI), bn_speedup.png (when the study has BN twins),
confusion_matrix.png (best variant, its non-diverged seeds' predictions pooled, as counted
by evaluate),
examples.png (a few training images per class, unscaled), bn_params.png (violins of the learned
BatchNorm gamma and beta per layer, seeds pooled, in studies whose variants differ in BatchNorm
when any variant saved bn_params.npz).
No Keras import: the numbers come from evaluate's files, the examples from the prepared data,
the BatchNorm parameters from the train stage's bn_params.npz. The figures are logged to the
study's `<study>-figures` MLflow run.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from ablations import tracking  # noqa: E402
from ablations.config import Params  # noqa: E402
from ablations.history import read_curves  # noqa: E402
from ablations.io import atomic_dir, read_json  # noqa: E402
from ablations.layout import DatasetFolder, UnitFolder  # noqa: E402

CURVES = (("loss", "train loss"), ("val_loss", "validation loss"),
          ("accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))
EXAMPLES_PER_CLASS = 6


def _stack(histories: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs 1..E, seeds × E array); a run that stopped early (diverged) is NaN-padded."""
    length = max((len(rows) for rows in histories), default=0)
    values = np.full((len(histories), length), np.nan)
    for i, rows in enumerate(histories):
        values[i, : len(rows)] = [row[key] for row in rows]
    return np.arange(1, length + 1), values


def learning_curves(histories: dict[str, list[list[dict]]], title: str) -> plt.Figure:
    """Per variant: the mean over seeds, and a band from the lowest to the highest seed."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, (key, label) in zip(axes.flat, CURVES):
        for name, runs in histories.items():
            epochs, values = _stack(runs, key)
            finite = np.where(np.isfinite(values), values, np.nan)
            if not np.isfinite(finite).any():
                continue  # every seed diverged at once: nothing to draw
            with warnings.catch_warnings():  # an epoch no seed reached is all-NaN: expected
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = (np.nanmean(finite, 0), np.nanmin(finite, 0),
                                   np.nanmax(finite, 0))
            (line,) = ax.plot(epochs, mean, marker=".", label=name)
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set(title=label, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle(f"{title} (mean over seeds; band: min..max)")
    fig.tight_layout()
    return fig


def accuracy_bars(metrics: dict[str, Any]) -> plt.Figure:
    """Mean test accuracy per variant with its 95% CI; n seeds and diverged runs annotated."""
    variants = metrics["variants"]
    names = list(variants)
    means = [variants[n]["test_accuracy"]["mean"] for n in names]
    errors = [variants[n]["test_accuracy"]["ci"] or 0.0 for n in names]
    heights = [m if m is not None else 0.0 for m in means]
    colors = ["tab:orange" if n == metrics["baseline"] else "tab:blue" for n in names]
    # A variant trained on other data (a transfer source) is labelled with it: not comparable.
    labels = [n if variants[n]["data"] == metrics["data"] else f"{n}\n(on {variants[n]['data']})"
              for n in names]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 1.1), 4.8))
    bars = ax.bar(labels, heights, yerr=errors, capsize=4, color=colors)
    for bar, name, mean in zip(bars, names, means):
        info = variants[name]
        text = "n/a" if mean is None else f"{mean:.3f}"
        text += f"\nn={info['test_accuracy']['n']}"
        if info["diverged"]:
            text += f", {info['diverged']} diverged"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, 0.01),
                    xycoords=("data", "axes fraction"),
                    ha="center", va="bottom", fontsize="x-small", color="white")
    ax.set(ylabel="test accuracy", ylim=(0, 1),
           title=f"{metrics['study']}: test accuracy\n(mean ± 95% CI over seeds; "
                 f"orange: baseline {metrics['baseline']})")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def speedup_chart(metrics: dict[str, Any]) -> plt.Figure:
    """BN speed-up factors (twin without BN ÷ with BN) in epochs and in seconds, with CIs."""
    speedups = metrics["bn_speedup"]
    names = list(speedups)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 1.6), 4.5))
    for offset, key, label in ((-0.2, "epochs_ratio", "epochs"),
                               (0.2, "seconds_ratio", "wall seconds")):
        means = [speedups[n][key]["mean"] for n in names]
        errors = [speedups[n][key]["ci"] or 0.0 for n in names]
        bars = ax.bar(x + offset, [m or 0.0 for m in means], 0.4, yerr=errors, capsize=4,
                      label=label)
        for bar, mean in zip(bars, means):
            if mean is None:
                ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom")
    ax.axhline(1.0, color="grey", lw=1, ls="--")  # 1 = no speed-up
    ax.set_xticks(x, [f"{n}\nvs {speedups[n]['twin']}" for n in names])
    ax.set(ylabel="without BN ÷ with BN",
           title=f"{metrics['study']}: BN speed-up to val accuracy {metrics['target_val_accuracy']}"
                 "\n(mean of per-seed ratios ± 95% CI)")
    ax.legend()
    fig.tight_layout()
    return fig


KIND_COLORS = {"main": "tab:blue", "simple": "tab:grey", "interaction": "tab:red",
               "pairs": "tab:green"}


def effects_forest(results: dict[str, Any]) -> plt.Figure:
    """Every effect (main, within each setting, interaction, question pair) as a point with its
    95% interval, in test-accuracy points, and a line at 0; hollow points have no interval
    (one seed)."""
    rows = [r for r in results["effect_rows"] if r["difference"] is not None][::-1]
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.28 * len(rows)))
    for y, row in enumerate(rows):
        color = KIND_COLORS[row["kind"]]
        ax.errorbar(row["difference"], y, xerr=row["ci"] or 0.0, fmt="o", capsize=3,
                    color=color, mfc=color if row["ci"] is not None else "white")
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize="small")
    for kind, color in KIND_COLORS.items():
        if any(r["kind"] == kind for r in rows):
            ax.plot([], [], "o", color=color, label=kind)
    ax.legend(fontsize="small", loc="best")
    ax.set(xlabel="difference in test accuracy (percentage points), ± 95% interval paired by seed",
           title=f"{results['study']}: effects (hollow: one seed, no interval)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def confusion(confusion: dict[str, Any], title: str) -> plt.Figure:
    """Row-normalized confusion matrix from evaluate's counts (rows: true class), drawn with
    matplotlib alone: scikit-learn's ConfusionMatrixDisplay draws the same, but importing
    scikit-learn costs every plot process about 0.9 s."""
    counts = np.asarray(confusion["counts"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    classes = confusion["classes"]
    fig, ax = plt.subplots(figsize=(max(5, len(classes) * 0.7), max(4.5, len(classes) * 0.6)))
    ax.imshow(rates, cmap="viridis", vmin=0.0, vmax=1.0)
    for (row, col), rate in np.ndenumerate(rates):
        ax.text(col, row, f"{rate:.2f}", ha="center", va="center", fontsize="x-small",
                color="black" if rate > 0.5 else "white")  # readable on viridis' ends
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="Predicted label", ylabel="True label")
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig


def examples(data_dir: Path, per_class: int = EXAMPLES_PER_CLASS) -> plt.Figure:
    """The first `per_class` training images of every class, back in raw pixel units."""
    dataset = DatasetFolder(data_dir)
    dataset.require(dataset.x("train"), dataset.y("train"), dataset.stats)
    x = np.load(dataset.x("train"), mmap_mode="r")
    y = np.load(dataset.y("train"))
    stats = read_json(dataset.stats)
    classes = dataset.class_names(int(y.max()) + 1)
    fig, axes = plt.subplots(len(classes), per_class, squeeze=False,
                             figsize=(per_class * 1.1, len(classes) * 1.15))
    for label, row in enumerate(axes):
        picks = np.flatnonzero(y == label)[:per_class]
        for ax, index in zip(row, list(picks) + [None] * per_class):
            ax.axis("off")
            if index is not None:
                raw = np.asarray(x[index]) * stats["scale"] + stats["offset"]  # undo scaling
                image = np.clip(raw / 255.0, 0.0, 1.0)  # raw pixels are 0..255
                ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None,
                          vmin=0, vmax=1)
        row[0].set_title(classes[label], fontsize="x-small", loc="left")
    fig.suptitle(f"{data_dir.name}: training images", fontsize="small")
    fig.tight_layout()
    return fig


def read_bn_params(models_dir: Path, variant: str, seeds: list[int]
                   ) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {"gamma": values, "beta": values}} pooled over the seeds that saved them."""
    layers: dict[str, dict[str, list]] = {}
    for seed in seeds:
        path = UnitFolder.of(models_dir, variant, seed).bn_params
        if not path.exists():
            continue
        with np.load(path, allow_pickle=False) as saved:
            for key in saved.files:
                layer, _, param = key.rpartition("/")
                layers.setdefault(layer, {"gamma": [], "beta": []})[param].append(saved[key])
    return {layer: {p: np.concatenate(v) if v else np.array([]) for p, v in params.items()}
            for layer, params in layers.items()}


def bn_violins(bn: dict[str, dict[str, dict[str, np.ndarray]]], study: str) -> plt.Figure:
    """One column per variant, rows gamma and beta, one violin per BN layer (input BN too)."""
    fig, axes = plt.subplots(2, len(bn), squeeze=False, sharey="row",
                             figsize=(max(6, 3.2 * len(bn)), 7))
    for col, (variant, layers) in enumerate(bn.items()):
        for row, param in enumerate(("gamma", "beta")):
            ax = axes[row, col]
            names = [n for n in layers if layers[n][param].size]
            at = {position: layers[name][param] for position, name in enumerate(names, start=1)}
            spread = {p: values for p, values in at.items() if np.ptp(values) > 0}
            if spread:  # one call per axes: matplotlib's cost is per call, not per violin
                ax.violinplot(list(spread.values()), positions=list(spread), showmedians=True)
            for position in at.keys() - spread.keys():  # constant (e.g. untrained): no KDE
                ax.plot([position], at[position][:1], marker="_", ms=20, color="tab:blue")
            ax.set_xticks(np.arange(1, len(names) + 1), names, rotation=45, ha="right",
                          fontsize="x-small")
            ax.set_title(f"{variant}: {param}", fontsize="small")
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{study}: learned BatchNorm parameters per layer (seeds pooled)")
    fig.tight_layout()
    return fig


def save_figures(figures: dict[str, plt.Figure], out_dir: Path) -> None:
    """All figures at once: the folder is replaced only when every one is written."""
    with atomic_dir(Path(out_dir)) as tmp:
        for filename, figure in figures.items():
            figure.savefig(tmp / filename, dpi=100)


def close(figures: dict[str, plt.Figure]) -> None:
    for figure in figures.values():
        plt.close(figure)


# --------------------------------------------------------------------------- stage


def varies_batchnorm(params: Params, study: str) -> bool:
    """Whether the study switches BatchNorm on or off or moves it: only then are the learned
    BN parameters part of its answer. Elsewhere the violins answer nothing asked and cost
    time in studies with many variants or BatchNorm layers (init_reg, optimizers)."""
    settings = {(cfg.norm, cfg.input_norm) for cfg in
                (params.variant(study, name) for name in params.studies[study].variants)}
    return len(settings) > 1


def study_figures(params: Params, study: str, results: dict[str, Any],
                  histories: dict[str, dict[int, list[dict]]], models_dir: Path,
                  data_dir: Path) -> dict[str, plt.Figure]:
    """{file name: figure} of one study from its results and curves (history.read_curves)."""
    figures = {"learning_curves.png": learning_curves(
                   {name: list(seeds.values()) for name, seeds in histories.items()},
                   f"{study}: learning curves"),
               "test_accuracy.png": accuracy_bars(results)}
    if results["bn_speedup"]:
        figures["bn_speedup.png"] = speedup_chart(results)
    if any(r["difference"] is not None for r in results.get("effect_rows", [])):
        figures["effects_forest.png"] = effects_forest(results)
    matrix = results.get("confusion")
    if matrix:
        figures["confusion_matrix.png"] = confusion(
            matrix, f"{study}: {matrix['variant']} (best), {matrix['seeds']} seeds pooled, "
                    "row-normalized")
    figures["examples.png"] = examples(Path(data_dir) / params.studies[study].data)
    if varies_batchnorm(params, study):
        allocation = (results.get("sequential") or {}).get("allocation")  # seeds per variant
        bn = {name: read_bn_params(models_dir, name,
                                   params.studies[study].seeds_of(name, allocation))
              for name in results["variants"]}
        bn = {name: layers for name, layers in bn.items() if layers}
        if bn:
            figures["bn_params.png"] = bn_violins(bn, study)
    return figures


def log_figures(study: str, plots_dir: Path) -> str:
    """One `<study>-figures` run holding the figures as written (PNG files, not re-rendered)."""
    tags = tracking.run_tags(study, "figures", kind="figures", dvc_stage=f"evaluate@{study}")
    with tracking.run(study, f"{study}-figures", tags,
                      parent_id=tracking.study_run_id(study)) as run_id:
        tracking.log_artifacts(run_id, plots_dir)
        return run_id


def plot_study(params: Params, study: str, results_path: Path, curves_path: Path,
               models_dir: Path, data_dir: Path, plots_dir: Path) -> list[str]:
    """The evaluate stage's figures: every figure of the study into `plots_dir` at once, drawn
    from the results and curves files, then MLflow; returns the file names."""
    figures = study_figures(params, study, read_json(results_path), read_curves(curves_path),
                            Path(models_dir), Path(data_dir))
    try:
        save_figures(figures, Path(plots_dir))
    finally:
        close(figures)
    log_figures(study, Path(plots_dir))
    return list(figures)
