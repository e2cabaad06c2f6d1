"""10,000 mutations of the real params.yaml through `ablations validate`, in-process (the rule
of tests/test_fuzz_params.py: valid params or exactly one `error:` line, no traceback, nothing
written). Prints how many examples ran, how each outcome was distributed, and every distinct
problem found (none expected).

    python bench/fuzz_params.py [--examples 10000] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from params_fuzz import mutated_params, validate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    outcomes: collections.Counter[str] = collections.Counter()
    problems: dict[str, tuple[str, bytes]] = {}

    with tempfile.TemporaryDirectory() as folder:
        @seed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None,
                  phases=[Phase.generate],  # every example counted, none shrunk
                  suppress_health_check=list(HealthCheck))
        @given(text=mutated_params())
        def run(text: bytes) -> None:
            outcome = validate(Path(folder), text)
            problem = outcome.problem()
            if problem is None:
                outcomes["valid" if outcome.code == 0 else "one error line"] += 1
                return
            outcomes["PROBLEM"] += 1
            key = problem.strip().splitlines()[-1][:200]  # the exception, or the rule broken
            problems.setdefault(key, (problem, text))

        started = time.process_time()
        run()
        cpu = time.process_time() - started

    total = sum(outcomes.values())
    print(f"{total} examples (seed {args.seed}), {cpu:.0f} s CPU: "
          + ", ".join(f"{name} {count}" for name, count in outcomes.most_common()))
    for key, (problem, text) in problems.items():
        print(f"\nPROBLEM {key}\n{problem[-3000:]}\ninput ({len(text)} bytes): {text[:600]!r}…")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
