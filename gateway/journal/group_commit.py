"""Group commit at intake: the accepts a process receives at one moment, committed together.

Every ``202`` (an ACK, a SendRequest answer) waits for its message's commit to be on
disk, and a commit that is on disk costs a write to the disk: one per message made the
journal the ceiling of the whole gateway, and on SQLite the processes queued for its one
writer lock. Here each caller hands its message over and waits, while one thread writes
every message waiting at that moment in one transaction (``Journal.accept_many``) and
wakes each caller with its own outcome: a duplicate is still a duplicate and a refusal
still that message's refusal. No wait is added to gather a batch: messages that arrive
while a commit is under way form the next one.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from gateway.batching import GroupExecutor, ItemFailed
from gateway.errors import Rejection
from gateway.journal.messages import AcceptRequest
from gateway.journal.model import AcceptOutcome, Change, Status
from gateway.journal.store import Journal


class GroupAccept:
    def __init__(self, journal: Journal, max_batch: int = 64) -> None:
        self.journal = journal
        self._group: GroupExecutor[AcceptRequest, AcceptOutcome] = GroupExecutor(
            self._commit, max_batch, name="accept-group-commit")

    def accept(self, request: AcceptRequest) -> AcceptOutcome:
        """Journal this message with whatever else is being accepted now; raises its own Rejection."""
        return self._group.submit(request)

    def _commit(self, requests: Sequence[AcceptRequest]) -> list[AcceptOutcome | ItemFailed]:
        return [ItemFailed(r) if isinstance(r, Rejection) else r for r in self.journal.accept_many(requests)]

    def close(self) -> None:
        self._group.close()


class Recorder(Protocol):
    """What writes a message's events: the journal itself, or a ``GroupRecorder`` in front of it."""

    def record(self, message_id: str, kind: str, actor: str, detail: dict[str, Any] | None = None, *,
               status: Status | None = None, only_from: Iterable[Status] | None = None, **columns: Any) -> bool: ...

    def record_many(self, changes: Sequence[Change]) -> list[bool]: ...


class GroupRecorder:
    """``Journal.record`` for the many threads of one worker, committed together (``record_many``).

    A delivery worker's threads each write a message's DELIVERED, RETRY_SCHEDULED or DEAD
    as their deliveries end; written one by one, every one was a commit of its own.
    """

    def __init__(self, journal: Journal, max_batch: int = 64) -> None:
        self.journal = journal
        self._group: GroupExecutor[Sequence[Change], list[bool]] = GroupExecutor(
            self._commit, max_batch, name="record-group-commit")

    def record(self, message_id: str, kind: str, actor: str, detail: dict[str, Any] | None = None, *,
               status: Status | None = None, only_from: Iterable[Status] | None = None, **columns: Any) -> bool:
        """As ``Journal.record``: the event, and the status moved if ``only_from`` holds; False if it did not."""
        return self.record_many([Change.of(message_id, kind, actor, detail, status=status, only_from=only_from,
                                           **columns)])[0]

    def record_many(self, changes: Sequence[Change]) -> list[bool]:
        """As ``Journal.record_many``: these changes land in one commit, whichever others share it."""
        return self._group.submit(changes)

    def _commit(self, groups: Sequence[Sequence[Change]]) -> list[list[bool]]:
        results = iter(self.journal.record_many([c for changes in groups for c in changes]))
        return [[next(results) for _ in changes] for changes in groups]

    def close(self) -> None:
        self._group.close()
