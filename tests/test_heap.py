"""heap.frozen: the collector kept off what existed before a block, and the process left as
found after it (a freeze that outlived a training in this process once made every later
gc.collect() walk all the suite made since, test_sequential_sim.py 50× slower)."""

import gc

import pytest

from ablations import heap
from ablations.decisions import holm_levels


def test_frozen_freezes_inside_the_block_and_unfreezes_after_it_even_on_error():
    assert gc.get_freeze_count() == 0
    before = [object() for _ in range(100)]
    with heap.frozen():
        assert gc.get_freeze_count() >= len(before)
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), heap.frozen():
        raise RuntimeError("a failed unit")
    assert gc.get_freeze_count() == 0


def test_a_callers_own_freeze_is_left_as_it_is():
    # The count only falls where a frozen object is freed (reference counting still frees
    # them); an unfreeze would make it 0.
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with heap.frozen():
            assert 0 < gc.get_freeze_count() <= frozen  # the block froze nothing more
        assert gc.get_freeze_count() > 0  # not unfrozen by the inner block
        holm_levels([0.01, 0.2], 0.05)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_holm_levels_leaves_the_collector_as_it_found_it():
    adjusted, _ = holm_levels([0.01, 0.04, 0.2], 0.05)
    assert adjusted == pytest.approx([0.03, 0.08, 0.2])  # Holm: sorted p × (m − k + 1), monotone
    assert gc.get_freeze_count() == 0
