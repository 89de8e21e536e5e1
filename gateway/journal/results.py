"""Versions of a lab result's orders: which messages carried one OrderId, so a new version can name its predecessor.

The MIS replaces an order's results when a corrected (or final) one arrives; it can only
do that safely if the new version says which message it replaces, rather than leaving the
MIS to guess from order numbers that labs reuse. One message may carry several orders,
each with its own history (the ``result_id`` column holds the OrderId).
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, insert, select
from sqlalchemy.engine import Connection

from gateway.journal import Journal, SideWrite
from gateway.journal.tables import result_versions


class ResultVersions:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def latest(self, result_id: str, other_than: str) -> str | None:
        """The MessageID of the newest earlier version of the order ``result_id``."""
        with self.journal.engine.connect() as conn:
            return conn.execute(
                select(result_versions.c.message_id)
                .where(and_(result_versions.c.result_id == result_id, result_versions.c.message_id != other_than))
                .order_by(result_versions.c.at.desc()).limit(1)
            ).scalar()

    @staticmethod
    def remember_write(message_id: str, orders: Sequence[tuple[str, str]]) -> SideWrite:
        """The orders a result carries, as (OrderId, Status), written in the transaction that accepts it.

        Written after the accept, a kill or an error between the two left an accepted result that no
        later correction could name as its predecessor, and a late resend stamped the old version as
        the newest. An order named twice in one message is remembered once, with its first status.
        """
        first: dict[str, str] = {}
        for order_id, status in orders:
            first.setdefault(order_id[:255], status)

        def write(conn: Connection, at: datetime) -> None:
            if first:
                conn.execute(insert(result_versions), [dict(message_id=message_id, result_id=order_id, status=status,
                                                            at=at) for order_id, status in first.items()])

        return write
