"""`ablations <stage> …`: thin entry points, one per DVC stage (see dvc.yaml for the commands).

Paths come from the command line that dvc.yaml writes (so each is written once, there);
hyper-parameters come only from params.yaml, which DVC tracks. Every stage validates the
whole params file first. A user error prints one `error: …` line and exits with status 2.
`replay` is no stage: it is run by hand after a tracking outage (see ablations.replay).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablations.errors import AblationsError


def _params(args):
    from ablations.config import load_params

    return load_params(args.params)


def cmd_validate(args) -> None:
    """Validate params.yaml completely, Keras names of every variant included."""
    from ablations.io import write_json

    params = _params(args)
    from ablations.models.blocks import build_optimizer  # imports Keras
    from ablations.models.zoo import build_model

    for study, spec in params.studies.items():
        shape, classes = params.input_shape(study)
        for name in spec.variants:
            cfg, where = params.variant(study, name), f"studies.{study}.variants.{name}"
            try:  # building resolves every Keras name (activation, initializer, ...)
                build_optimizer(cfg)
                build_model(cfg, shape, classes)
            except AblationsError as error:
                raise AblationsError(f"{where}: {error}") from None
            except ValueError as error:
                raise AblationsError(
                    f"{where}: the model cannot take {shape} images (data.prepared."
                    f"{spec.data}.size): {str(error).splitlines()[0]}") from None
    # Constant content: downstream stages re-run for their own params, not for this file.
    write_json(Path(args.out), {"params": "valid"})


def cmd_download(args) -> None:
    from ablations.data.sources import fetch

    params = _params(args)
    mirror = Path(params.data.mirror) if params.data.mirror else None
    fetch(args.dataset, Path(args.out), mirror=mirror)


def cmd_split(args) -> None:
    from ablations.data.prepare import split

    counts = split(_prepared(args), Path(args.raw), Path(args.out))
    print(f"{args.name}: {counts}")


def cmd_standardize(args) -> None:
    from ablations.data.prepare import standardize

    standardize(_prepared(args), Path(args.split), Path(args.out))


def _prepared(args):
    prepared = _params(args).data.prepared
    if args.name not in prepared:
        raise AblationsError(f"data.prepared.{args.name}: no such dataset (have {sorted(prepared)})")
    return prepared[args.name]


def cmd_train(args) -> None:
    params = _params(args)
    cfg = params.variant(args.study, args.variant)
    from ablations.training import train  # imports Keras: after the params are known good

    train(args.study, args.variant, cfg, Path(args.data), Path(args.out), Path(args.checkpoint))


def cmd_replay(args) -> None:
    """Complete a variant's MLflow run from its train outputs after a tracking outage."""
    cfg = _params(args).variant(args.study, args.variant)
    from ablations.replay import replay

    replay(args.study, args.variant, cfg, Path(args.out))


def cmd_evaluate(args) -> None:
    from ablations.evaluate import evaluate_study

    params = _params(args)
    evaluate_study(params, args.study, Path(args.models), Path(args.data), Path(args.metrics))


def cmd_plot(args) -> None:
    from ablations.plots import plot_study

    _params(args)
    plot_study(args.study, Path(args.models), Path(args.metrics), Path(args.out))


def cmd_polyfit(args) -> None:
    from ablations import polyfit, tracking

    params = _params(args)
    tracking.use_experiment("polyfit")
    polyfit.run(params.polyfit, Path(args.metrics), Path(args.plot))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablations", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name, func, *arguments):
        command = sub.add_parser(name, help=func.__doc__)
        for argument in arguments:
            command.add_argument(argument)
        command.set_defaults(func=func)

    stage("validate", cmd_validate, "--out")
    stage("download", cmd_download, "dataset", "--out")
    stage("split", cmd_split, "name", "--raw", "--out")
    stage("standardize", cmd_standardize, "name", "--split", "--out")
    stage("train", cmd_train, "study", "variant", "--data", "--out", "--checkpoint")
    stage("replay", cmd_replay, "study", "variant", "--out")
    stage("evaluate", cmd_evaluate, "study", "--models", "--data", "--metrics")
    stage("plot", cmd_plot, "study", "--models", "--metrics", "--out")
    stage("polyfit", cmd_polyfit, "--metrics", "--plot")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = [k for k, v in vars(args).items() if v is None]
    if missing:
        print(f"error: missing option(s): {', '.join('--' + m for m in missing)}", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except AblationsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
