"""plot stage: per-study comparison figures (DVC plots), also logged to MLflow.

    ablations plot batchnorm --models models/batchnorm --metrics metrics/batchnorm.json \
        --out plots/batchnorm

Figures: learning_curves.png (train/validation loss and accuracy, variants overlaid),
test_accuracy.png (final test accuracy per variant) and, when the study has BN twins,
bn_speedup.png. They are logged to the study's `<study>-summary` run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ablations import tracking  # noqa: E402
from ablations.io import atomic_dir, read_json  # noqa: E402
from ablations.history import read_history  # noqa: E402

CURVES = (("loss", "train loss"), ("val_loss", "validation loss"),
          ("accuracy", "train accuracy"), ("val_accuracy", "validation accuracy"))


def learning_curves(histories: dict[str, list[dict]], title: str) -> plt.Figure:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, (key, label) in zip(axes.flat, CURVES):
        for name, rows in histories.items():
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker=".", label=name)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def bar_chart(values: dict[str, float | None], title: str, ylabel: str) -> plt.Figure:
    """Bars per variant; a missing value (diverged, never reached target) is marked, not hidden."""
    fig, ax = plt.subplots(figsize=(max(6, len(values) * 0.9), 4.5))
    names = list(values)
    heights = [values[n] if values[n] is not None else 0.0 for n in names]
    bars = ax.bar(names, heights, color="tab:blue")
    for bar, name in zip(bars, names):
        text = "n/a" if values[name] is None else f"{values[name]:.3f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def study_figures(study: str, models_dir: Path, metrics: dict) -> dict[str, plt.Figure]:
    variants = metrics["variants"]
    histories = {name: read_history(Path(models_dir) / name / "history.csv") for name in variants}
    figures = {
        "learning_curves.png": learning_curves(histories, f"{study}: learning curves"),
        "test_accuracy.png": bar_chart(
            {n: m["test_accuracy"] for n, m in variants.items()},
            f"{study}: test accuracy", "test accuracy"),
    }
    if metrics.get("bn_speedup"):
        target = metrics["target_val_accuracy"]
        figures["bn_speedup.png"] = bar_chart(
            metrics["bn_speedup"], f"{study}: BN speed-up to val accuracy {target}",
            "epochs without BN ÷ epochs with BN")
    return figures


def plot_study(study: str, models_dir: Path, metrics_path: Path, out_dir: Path) -> list[str]:
    figures = study_figures(study, models_dir, read_json(metrics_path))
    with atomic_dir(out_dir) as tmp:
        for filename, figure in figures.items():
            figure.savefig(tmp / filename, dpi=100)
    tags = tracking.run_tags(study, "summary", kind="summary", dvc_stage=f"plot@{study}")
    with tracking.run(study, f"{study}-summary", tags):
        for filename, figure in figures.items():
            tracking.mlflow.log_figure(figure, filename)
        tracking.mlflow.log_artifact(str(metrics_path))
    for figure in figures.values():
        plt.close(figure)
    return list(figures)
