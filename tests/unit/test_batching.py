"""Group commit: concurrent calls share a batch, and one item's failure stays its own."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.batching import GroupExecutor, ItemFailed


def test_concurrent_calls_are_batched_and_each_gets_its_own_result():
    gate = threading.Event()
    batches: list[list[int]] = []

    def run(items):
        gate.wait(5)  # hold the first batch so the others queue up behind it
        batches.append(list(items))
        return [i * 10 for i in items]

    group = GroupExecutor(run, max_batch=8, name="t")
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(group.submit, i) for i in range(20)]
        threading.Timer(0.3, gate.set).start()
        results = [f.result(10) for f in futures]
    group.close()
    assert results == [i * 10 for i in range(20)]
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert max(len(b) for b in batches) > 1 and all(len(b) <= 8 for b in batches)


def test_a_failed_item_fails_alone_and_a_failed_batch_fails_all():
    def run(items):
        if "all" in items:
            raise RuntimeError("broker gone")
        return [ItemFailed(ValueError(i)) if i == "bad" else i.upper() for i in items]

    group = GroupExecutor(run, max_batch=4, name="t")
    assert group.submit("ok") == "OK"
    with pytest.raises(ValueError):
        group.submit("bad")
    with pytest.raises(RuntimeError, match="broker gone"):
        group.submit("all")
    assert group.submit("still") == "STILL"  # the executor survives both
    group.close()
