"""The front door under fuzzing: hypothesis mutates the real params.yaml (keys dropped, renamed,
duplicated; values of other types, huge or non-finite, nested thousands deep, aliased, binary;
raw bytes corrupted) and `ablations validate` must answer each with valid params or exactly one
`error:` line: no traceback, nothing written. 300 examples here, the same rule over 10,000 in
bench/fuzz_params.py."""

import pytest
from hypothesis import HealthCheck, given, settings
from params_fuzz import mutated_params, validate

from conftest import REPO


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    # The unmutated file passes: the judge accepts a valid outcome (and Keras is warm).
    assert validate(folder, (REPO / "params.yaml").read_bytes()).problem() is None
    return folder


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(text=mutated_params())
def test_validate_answers_every_mutation_with_valid_params_or_one_error_line(folder, text):
    outcome = validate(folder, text)
    assert outcome.problem() is None, outcome.problem()


def test_the_judge_catches_a_second_line_and_a_leftover(folder):
    """The rule can fail: a valid file with a leftover output, a broken one with two lines."""
    from params_fuzz import Outcome

    assert Outcome(0, "", "", ["valid.json", "x"], None).problem()
    assert Outcome(2, "", "error: a\nerror: b\n", [], None).problem()
    assert Outcome(2, "", "error: a\n", ["valid.json"], None).problem()
    assert Outcome(2, "", "error: a\n", [], None).problem() is None
