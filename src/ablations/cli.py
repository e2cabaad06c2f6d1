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

    return load_params(args.params, getattr(args, "budget", None))


# Networks (architecture, image shape, classes) that built in this process: building is what
# takes validate's time, and the same network builds the same way again (validate runs many
# times in one process under tests/test_fuzz_params.py).
_BUILT: set[str] = set()


def _known_studies(params, studies) -> None:
    """One `error:` line for the first study params.yaml does not have."""
    unknown = [study for study in studies if study not in params.studies]
    if unknown:
        raise AblationsError(f"studies.{unknown[0]}: no such study (have {sorted(params.studies)})")


def cmd_validate(args) -> None:
    """Validate params.yaml completely, Keras names of every variant included."""
    from ablations.io import write_json

    out = Path(args.out)
    if out.is_dir():
        raise AblationsError(f"--out {out}: is a folder; validate writes a file there")
    out.unlink(missing_ok=True)  # a failed check leaves no earlier run's "valid" behind
    params = _params(args)
    from ablations.models.blocks import activation_layer, build_optimizer, weight_options
    from ablations.models.zoo import architecture, build_structure  # Keras

    for study, spec in params.studies.items():
        for name in spec.variants:
            cfg, where = params.variant(study, name), f"studies.{study}.variants.{name}"
            data = params.variant_data(study, name)
            shape, classes = params.input_shape(data)
            built_as = f"{architecture(cfg, shape)} {classes}"
            try:  # every Keras name (activation, initializer, ...) resolved for every variant
                activation_layer(cfg.activation, "check")
                weight_options(cfg)
                build_optimizer(cfg)
                if built_as not in _BUILT:  # and each network built once, to check shapes
                    build_structure(cfg, shape, classes)
                    _BUILT.add(built_as)
            except AblationsError as error:
                raise AblationsError(f"{where}: {error}") from None
            except ValueError as error:
                raise AblationsError(
                    f"{where}: the model cannot take {shape} images (data.prepared."
                    f"{data}.size): {str(error).splitlines()[0]}") from None
    # Constant content: downstream stages re-run for their own params, not for this file.
    write_json(Path(args.out), {"params": "valid"})


def cmd_describe(args) -> None:
    """Each variant's layers, output shapes and parameter counts (built, not trained)."""
    import json

    params = _params(args)
    _known_studies(params, args.studies)
    from ablations.describe import as_text, describe  # imports Keras

    described = describe(params, args.studies or list(params.studies))
    print(json.dumps(described, indent=1) if args.json else as_text(described))


def cmd_compose(args) -> None:
    """Write params.yaml as budget BUDGET's composition of conf/ (what `dvc exp run -S
    budget=BUDGET [-S overlay=OVERLAY]` writes); the committed params.yaml is the laptop
    budget's."""
    from ablations.config import compose_budget, load_params

    out = Path(args.params)
    compose_budget(args.budget, out, out.parent / "conf", args.overlay)
    load_params(out)
    print(f"{out}: budget {args.budget}" + (f", overlay {args.overlay}" if args.overlay else ""))


def cmd_download(args) -> None:
    from ablations.data.sources import fetch

    params = _params(args)
    mirror = Path(params.data.mirror) if params.data.mirror else None
    fetch(args.dataset, Path(args.out), mirror=mirror)


def cmd_weights(args) -> None:
    """Pretrained weights NAME into --out, md5-checked as Keras publishes it (mirror, Keras'
    cache, Keras' URL), with its sha256 recorded beside it."""
    from ablations.data.sources import fetch_weights

    params = _params(args)
    if args.name not in params.data.weights:
        raise AblationsError(f"data.weights: {args.name!r} is not listed "
                             f"(have {params.data.weights})")
    mirror = Path(params.data.mirror) if params.data.mirror else None
    fetch_weights(args.name, Path(args.out), mirror=mirror)


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
    """Train every (variant, seed) of a study whose outputs are not current, or only VARIANTs."""
    from ablations import executors, units

    executor = executors.choose(args.executor)
    params = _params(args)
    _known_studies(params, [args.study])
    if params.studies[args.study].sequential and not args.variants:
        _train_rounds(args, params, executor)
        return
    planned = units.plan(params, args.study, Path(args.data), Path(args.out),
                         Path(args.checkpoints), only=args.variants)
    removed = [] if args.variants else units.remove_stale(Path(args.out), planned)
    todo = [unit for unit in planned if not unit.is_current()]
    print(f"train {args.study}: {len(todo)} to train, {len(planned) - len(todo)} current, "
          f"{len(removed)} removed", flush=True)
    if todo:  # Keras (and Ray) imported only when there is work
        executors.train(executor, args.study, todo)


def _train_rounds(args, params, executor: str) -> None:
    """A study whose seeds are a range: round after round, the seeds undecided answers need
    (ablations.sequential); units already current are kept, as in any study."""
    from ablations import evaluate, executors, sequential, units

    study, out, data = args.study, Path(args.out), Path(args.data)

    def train(allocation: sequential.Allocation) -> None:
        planned = units.plan(params, study, data, out, Path(args.checkpoints),
                             allocation=allocation)
        todo = [unit for unit in planned if not unit.is_current()]
        print(f"train {study} round ({max(allocation.values())} seeds at most): "
              f"{len(todo)} to train, {len(planned) - len(todo)} current", flush=True)
        if todo:
            executors.train(executor, study, todo)

    allocation, decided, taken = sequential.run_rounds(
        params.studies[study],
        lambda counts: evaluate.round_decisions(params, study, out, data, counts), train)
    final = units.plan(params, study, data, out, Path(args.checkpoints), allocation=allocation)
    removed = units.remove_stale(out, final)
    undecided = sum(d["decision"] == "undecided" for d in decided)
    print(f"train {study}: {taken} round(s), {len(final)} units, {undecided} of {len(decided)} "
          f"answers undecided, {len(removed)} removed", flush=True)


def cmd_replay(args) -> None:
    """Complete a unit's MLflow run from its train outputs after a tracking outage."""
    params = _params(args)
    seed = params.studies[args.study].first_seeds()[0] if args.seed is None else args.seed
    cfg = params.variant(args.study, args.variant, seed)
    from ablations.replay import replay

    replay(args.study, args.variant, cfg, Path(args.out),
           Path(args.data) / params.variant_data(args.study, args.variant))


def cmd_evaluate(args) -> None:
    """Statistics over seeds and verdicts of one study, then its figures (no Keras import)."""
    from ablations.evaluate import evaluate_study

    params = _params(args)
    _known_studies(params, [args.study])
    evaluate_study(params, args.study, Path(args.models), Path(args.data), Path(args.results),
                   Path(args.metrics), Path(args.curves), Path(args.accuracy))
    from ablations.plots import plot_study  # matplotlib: after the numbers are written

    plot_study(params, args.study, Path(args.results), Path(args.curves), Path(args.models),
               Path(args.data), Path(args.plots))


def cmd_report(args) -> None:
    """reports/index.html: every study's question, table, figures and verdict on one page."""
    from ablations.report import build_report

    build_report(_params(args), Path(args.results), Path(args.plots), Path(args.out),
                 polyfit=(Path(args.polyfit_results), Path(args.polyfit_plot)))


def cmd_polyfit(args) -> None:
    from ablations import polyfit

    params = _params(args)
    polyfit.run(params.polyfit, Path(args.results), Path(args.metrics), Path(args.plot))


def _parser() -> argparse.ArgumentParser:
    from ablations import __version__

    parser = argparse.ArgumentParser(prog="ablations", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name, func, *arguments):
        command = sub.add_parser(name, help=func.__doc__)
        for argument in arguments:
            command.add_argument(argument)
        command.set_defaults(func=func)
        return command

    budget_help = "a conf/budget/ name: validate its composition instead of --params"
    stage("validate", cmd_validate, "--out").add_argument("--budget", help=budget_help)
    describe = stage("describe", cmd_describe)
    describe.add_argument("studies", nargs="*", metavar="study", help="default: every study")
    describe.add_argument("--budget", help=budget_help)
    describe.add_argument("--json", action="store_true", help="machine-readable output")
    stage("compose", cmd_compose, "budget").add_argument(
        "--overlay", help="a conf/overlay/ name composed over the budget (smoke: a few images "
                          "per class, 1 epoch, 1 seed)")
    stage("download", cmd_download, "dataset", "--out")
    stage("weights", cmd_weights, "name", "--out")
    stage("split", cmd_split, "name", "--raw", "--out")
    stage("standardize", cmd_standardize, "name", "--split", "--out")
    train = stage("train", cmd_train, "study", "--data", "--out", "--checkpoints")
    train.add_argument("variants", nargs="*", metavar="variant",
                       help="train only these variants (default: all, and remove stale ones)")
    train.add_argument("--executor", default="",
                       help="where units train: local (in this process) or ray (Ray tasks); "
                            "default: $ABLATIONS_EXECUTOR, else local")
    replay = stage("replay", cmd_replay, "study", "variant", "--data", "--out")
    replay.add_argument("--seed", type=int, help="which seed's run (default: the study's first)")
    stage("evaluate", cmd_evaluate, "study", "--models", "--data", "--results", "--metrics",
          "--curves", "--accuracy", "--plots")
    stage("report", cmd_report, "--results", "--plots", "--polyfit-results", "--polyfit-plot",
          "--out")
    stage("polyfit", cmd_polyfit, "--results", "--metrics", "--plot")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `ablations` command: run in the long-lived worker when one may
        from ablations import worker

        status = worker.run("ablations.cli:main", sys.argv[1:])
        if status is not None:
            return status
    args = _parser().parse_args(argv)
    missing = [k for k, v in vars(args).items() if v is None and k not in ("seed", "budget", "overlay")]
    if missing:
        print(f"error: missing option(s): {', '.join('--' + m for m in missing)}", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except AblationsError as error:
        # A safety net: messages quote short excerpts, but the error is one line, and no line
        # may flood a terminal.
        message = " ".join(line.strip() for line in str(error).splitlines())
        print("error: " + (message if len(message) <= 990 else message[:989] + "…"),
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
