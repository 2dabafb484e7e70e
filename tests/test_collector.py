"""The garbage collector's settings once a server has started (process/collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from keyturn_server.process import collector


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored")
def test_what_start_up_made_is_frozen_and_collections_are_spaced_out() -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(100)]  # lives in the heap, tracked
    collector.settle_after_start()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold() == (collector.YOUNG, collector.OLDER, collector.OLDER)
    assert collector.YOUNG > 700  # CPython's default, measured to cost 7-12% per call


@pytest.mark.usefixtures("restored")
def test_cycles_made_after_start_are_still_collected_without_being_asked() -> None:
    collector.settle_after_start()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = [False]
    weakref.finalize(a, gone.__setitem__, 0, True)
    del a, b
    # No gc.collect(): allocations past the young threshold must start a collection.
    kept = [[n] for n in range(collector.YOUNG * 2)]
    assert gone[0], "a reference cycle outlived two young generations' worth of allocations"
    del kept
