"""Keras model builders: `blocks` (layers in a configurable order) and `zoo` (whole networks).

Every Keras import of the package comes through here first (training imports this package
before Keras), so Keras is imported without the optional packages it imports, when installed,
for features this package never uses: scikit-learn for its SKLearnClassifier wrappers (with
scipy.stats), matplotlib for its image-gallery plots, pandas for DataFrame inputs. They were
about a third of the import of Keras that validate and every train stage pay
(docs/performance.md). Each stays importable: a stage that needs one (evaluate's confusion
matrix, MLflow's pandas) imports it as usual; only Keras' own handles to them are None.
"""

import sys

KERAS_UNUSED_EXTRAS = ("sklearn", "matplotlib", "pandas")


def _import_keras_without_extras() -> None:
    if "keras" in sys.modules:
        return
    hidden = [name for name in KERAS_UNUSED_EXTRAS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden, None))  # `import name` raises ImportError
    try:
        import keras  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


_import_keras_without_extras()
