"""The cyclic garbage collector kept off the objects that outlive a block of work."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen() -> Iterator[None]:
    """Inside the block, the objects that exist at its start are skipped by the cyclic
    collector (gc.freeze), so a gc.collect() run inside it (Keras' clear_session per unit,
    statsmodels' Holm branch per call) walks only what the block made. On exit they are
    unfrozen: a freeze that outlived its block would leave every later block of the process
    unable to freeze, and each of its gc.collect() calls walking all it made since. A caller's
    own freeze (an enclosing block's, a forking server's) is left as it is."""
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    try:
        yield
    finally:
        if ours:
            gc.unfreeze()
