"""The audit of refusals: every one written down, masked; an authenticated sender's envelope kept as REJECTED."""
from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal.chain import TrailStore
from gateway.journal.model import ENVELOPE_DIGEST, Status, envelope_digest, utcnow
from gateway.journal.tables import messages, rejections
from gateway.masking import mask_text


class AuditStore(TrailStore):
    def reject(
        self,
        rejection: Rejection,
        *,
        source: str,
        sender: str | None = None,
        message_id: str | None = None,
        remote: str | None = None,
        env: Envelope | None = None,
        actor: str = "gateway",
    ) -> None:
        """Audit a refusal; an authenticated sender's envelope is also journalled as REJECTED."""
        now = utcnow()
        detail = mask_text(rejection.detail)
        with self.engine.begin() as conn:
            conn.execute(
                insert(rejections).values(
                    at=now,
                    source=source,
                    code=rejection.code,
                    field=rejection.field,
                    detail=detail,
                    sender=(sender or "")[:50] or None,
                    message_id=(message_id or "")[:64] or None,
                    remote=remote,
                )
            )
        if env is None:
            return
        xml = env.to_xml()
        event_detail = {"code": rejection.code, "field": rejection.field, "detail": detail,
                        ENVELOPE_DIGEST: envelope_digest(xml)}
        row = dict(
            message_id=env.message_id, sender=env.sender, recipient=env.recipient, message_type=env.message_type,
            status=Status.REJECTED.value, fingerprint=env.fingerprint(), source=source, envelope=xml,
            created_at=now, updated_at=now, attempts=0, replays=0, last_error=f"{rejection.code}: {detail}",
            reference_id=env.reference_message_id,
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(messages).values(**row))
                self._append_event(conn, env.message_id, Status.REJECTED.value, "REJECTED", actor, event_detail, now)
        except IntegrityError:
            # An accepted message with this id exists; its record must not be overwritten
            # by a refused copy. The audit row above keeps the refusal.
            pass

    def rejections(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(rejections).order_by(rejections.c.id.desc()).limit(limit)).all()
        return [r._asdict() for r in rows]
