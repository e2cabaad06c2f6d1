"""Stage processes import only what their stage needs (issue 26: their start-up is a fixed cost
paid once per stage, dozens of times per run). Each check runs in a fresh interpreter."""

import subprocess
import sys

PRINT_MODULES = "print(' '.join(sorted({m.split('.')[0] for m in sys.modules if sys.modules[m]})))"


def imported_after(*steps: str) -> list[set[str]]:
    """Top-level packages in sys.modules after each of `steps`, run in turn in a new interpreter."""
    code = "import sys\n" + "".join(f"{step}\n{PRINT_MODULES}\n" for step in steps)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [set(line.split()) for line in done.stdout.splitlines()]


def test_numbers_and_report_stages_do_not_import_matplotlib():
    [modules] = imported_after("import ablations.cli, ablations.evaluate, ablations.report")
    assert {"mlflow", "ablations"} <= modules  # the walk imported them
    assert "matplotlib" not in modules


def test_keras_comes_without_the_extras_it_would_import_for_nothing():
    """validate's and train's Keras: no scikit-learn or matplotlib behind it (pandas comes with
    MLflow in train, not with Keras in validate); each still imports when a stage asks for it."""
    validate, train, later = imported_after(
        "import ablations.models.zoo, keras\nassert keras.layers.Dense",
        "import ablations.training",
        "import sklearn.metrics, pandas, matplotlib.pyplot")
    assert {"keras", "torch"} <= validate and not {"sklearn", "matplotlib", "pandas"} & validate
    assert "mlflow" in train and not {"sklearn", "matplotlib"} & train
    assert {"sklearn", "pandas", "matplotlib"} <= later


def test_evaluate_and_plot_draw_the_confusion_matrix_without_scikit_learn():
    """The confusion counts (evaluate) and their figure (plot) need NumPy and matplotlib only:
    scikit-learn would cost each of the 2 × studies processes its import."""
    [modules] = imported_after(
        "import numpy as np\nfrom ablations import evaluate, plots\n"
        "counts = evaluate.confusion_counts(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)\n"
        "plots.confusion({'counts': counts.tolist(), 'classes': ['a', 'b']}, 'best')")
    assert {"matplotlib", "ablations"} <= modules and "sklearn" not in modules
