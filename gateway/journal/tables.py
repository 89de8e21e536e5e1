"""Table definitions; Alembic migrations are the source of truth for the live schema."""
from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("sender", String(50), nullable=False),
    Column("recipient", String(50), nullable=False),
    Column("message_type", String(1024), nullable=False),
    Column("route", String(50)),
    Column("status", String(16), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Column("channel", String(50)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("replays", Integer, nullable=False, default=0),
    Column("last_error", Text),
    #: The round the message is on (replay and the sweeper raise it); copies of older rounds are stale.
    Column("generation", Integer, nullable=False, default=0),
    #: Stage events of this round already in the trail (store.Stage bits): each is written once.
    Column("stages", Integer, nullable=False, default=0),
    #: The envelope's ReferenceMessageID (migration 0010): replies are found by it.
    Column("reference_id", String(36)),
    Index("ix_messages_status_created", "status", "created_at"),
    Index("ix_messages_status_updated", "status", "updated_at"),
    # The console's search (migration 0010): each filter with the time order, keyset-paged.
    Index("ix_messages_created", "created_at", "message_id"),
    Index("ix_messages_sender_created", "sender", "created_at", "message_id"),
    Index("ix_messages_recipient_created", "recipient", "created_at", "message_id"),
    Index("ix_messages_route_created", "route", "created_at", "message_id"),
    Index("ix_messages_type_created", "message_type", "created_at", "message_id"),
    Index("ix_messages_reference", "reference_id"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(36), ForeignKey("messages.message_id"), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("code", String(64), nullable=False),
    Column("field", String(255)),
    Column("detail", Text, nullable=False),
    Column("sender", String(50)),
    Column("message_id", String(64)),
    Column("remote", String(64)),
    Index("ix_rejections_sender_at", "sender", "at"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("message_id", String(36), ForeignKey("messages.message_id"), primary_key=True),
    Column("recipient", String(50), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("message_type", String(1024), nullable=False),
    Column("root_name", String(255), nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True)),
    Column("deliveries", Integer, nullable=False, default=0),
    Column("acked_at", DateTime(timezone=True)),
    Column("accepted", Boolean),
    Index("ix_inbox_pending", "recipient", "kind", "acked_at", "parked_at"),
)

status_reports = Table(
    "status_reports",
    metadata,
    Column("message_id", String(36), ForeignKey("messages.message_id"), primary_key=True),
    Column("reported_at", DateTime(timezone=True), nullable=False),
)

result_versions = Table(
    "result_versions",
    metadata,
    Column("message_id", String(36), ForeignKey("messages.message_id"), primary_key=True),
    Column("result_id", String(255), primary_key=True),  # an order of the lab result (Order/OrderId)
    Column("status", String(1), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_result_versions_result", "result_id", "at"),
)

service_records = Table(
    "service_records",
    metadata,
    Column("record_key", String(300), primary_key=True),
    Column("record_id", String(250), nullable=False),
    Column("code_mo", String(6), nullable=False),
    Column("sender", String(50), nullable=False),
    Column("insurer", String(50), nullable=False),
    Column("period", String(7), nullable=False),
    Column("message_id", String(36), ForeignKey("messages.message_id"), nullable=False),
    Column("act_message_id", String(36)),
    Column("outcome", String(16)),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("errors", Text),  # the insurer's errors about this record, JSON (migration 0009)
    Index("ix_service_records_act", "code_mo", "insurer", "period"),
)

acts = Table(
    "acts",
    metadata,
    Column("message_id", String(36), ForeignKey("messages.message_id"), primary_key=True),
    Column("code_mo", String(6), nullable=False),
    Column("insurer", String(50), nullable=False),
    Column("period", String(7), nullable=False),
    Column("version", Integer, nullable=False),
    Column("act_number", String(15), nullable=False),
    Column("replaces", String(36)),
    Column("digest", String(64), nullable=False),
    Column("records", Integer, nullable=False),
    Column("total", String(20), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("file_name", String(40)),  # the register's H-file name, without extension (migration 0009)
    UniqueConstraint("code_mo", "insurer", "period", "version", name="uq_acts_version"),
    Index("ix_acts_file_name", "file_name"),
)

registry_requests = Table(
    "registry_requests",
    metadata,
    Column("message_id", String(36), ForeignKey("messages.message_id"), primary_key=True),
    Column("requester", String(50), nullable=False),
    Column("registry", String(50), nullable=False),
    Column("message_type", String(1024), nullable=False),
    Column("accepted_at", DateTime(timezone=True), nullable=False),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("answer_id", String(36)),
    Column("answered_at", DateTime(timezone=True)),
    Column("timeout_id", String(36)),
    Column("timed_out_at", DateTime(timezone=True)),
    Index("ix_registry_requests_open", "answer_id", "timeout_id", "deadline_at"),
)

registry_cache = Table(
    "registry_cache",
    metadata,
    Column("cache_key", String(64), primary_key=True),
    Column("message_type", String(1024), nullable=False),
    Column("answer", LargeBinary, nullable=False),
    Column("answer_id", String(36), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

#: Who did what in the operator's console or CLI (migration 0010): logins, payload views, replays, re-maps.
operator_audit = Table(
    "operator_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("operator", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(255)),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("remote", String(64)),
    Index("ix_operator_audit_at", "at"),
    Index("ix_operator_audit_remote", "action", "remote", "at"),
)

#: Console sessions (migration 0010): the cookie carries a random token, the journal its hash.
operator_sessions = Table(
    "operator_sessions",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("operator", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("remote", String(64)),
)

#: Once-only duties (migration 0011): who holds each one's lease, and until when (gateway.journal.leases).
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
