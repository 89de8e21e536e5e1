"""Group commit: calls made concurrently from many threads run together as one batch.

A consumer handles each message on its own pool thread and acks it when the handler
returns, which keeps the at-least-once contract simple. But a journal transaction and
a confirmed publish per message cost a commit and a round trip each. ``GroupExecutor``
lets every handler thread hand its item over and wait, while one thread runs all the
items waiting at that moment in a single batch (one transaction, one streamed publish)
and wakes each caller with its own result. The ack still follows the durable work.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ItemFailed:
    """A batch result for an item that failed alone: only its caller gets the error.

    Without it one poison message would fail, and so requeue, every message batched with it.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error


class GroupExecutor(Generic[T, R]):
    def __init__(self, run_batch: Callable[[Sequence[T]], Sequence[R | ItemFailed]], max_batch: int,
                 name: str) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[T, Future[R]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> R:
        """Run ``item`` in the next batch and return its result (or raise the batch's error)."""
        fut: Future[R] = Future()
        self._queue.put((item, fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            try:
                results = self._run_batch([item for item, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if isinstance(result, ItemFailed):
                    fut.set_exception(result.error)
                else:
                    fut.set_result(result)
