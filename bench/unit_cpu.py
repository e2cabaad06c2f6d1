"""CPU seconds (user + sys of this process) of whole units of the default budget, as the train
stage runs them (training.train_study: fit, in-epoch validation, testing, saving, MLflow
logging), one thread (OMP_NUM_THREADS=1), so that a shared machine's load changes the
numbers less than wall seconds: the allocation's yardstick (docs/budget.md).

    OMP_NUM_THREADS=1 python bench/unit_cpu.py optimizers/adam init_reg/glorot_uniform …

Needs `dvc repro standardize`. Outputs and MLflow runs go to a temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def main(names: list[str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="unit_cpu_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    from ablations import units
    from ablations.config import load_params
    from ablations.training import train_study

    params = load_params("params.yaml")
    for name in names:
        study, variant = name.split("/")
        plan = units.plan(params, study, Path("data/prepared"), folder / "models" / study,
                          folder / "checkpoints" / study, only=[variant])
        for unit in [u for u in plan if u.seed == 0]:  # its source first (transfer)
            started = cpu()
            train_study(study, [unit], 30.0)
            print(f"{study}/{unit.variant}: {cpu() - started:.1f} s CPU", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
