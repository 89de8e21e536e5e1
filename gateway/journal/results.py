"""Versions of a lab result's orders: which messages carried one OrderId, so a new version can name its predecessor.

The MIS replaces an order's results when a corrected (or final) one arrives; it can only
do that safely if the new version says which message it replaces, rather than leaving the
MIS to guess from order numbers that labs reuse. One message may carry several orders,
each with its own history (the ``result_id`` column holds the OrderId).
"""
from __future__ import annotations

from sqlalchemy import and_, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.journal import Journal, utcnow
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

    def remember(self, result_id: str, message_id: str, status: str) -> None:
        try:
            with self.journal.engine.begin() as conn:
                conn.execute(insert(result_versions).values(message_id=message_id, result_id=result_id[:255],
                                                            status=status, at=utcnow()))
        except IntegrityError:
            pass  # a repeat of a version already remembered
