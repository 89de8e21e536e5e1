"""XSD registry: the envelope schema and one payload schema per message type.

A message type is the target namespace of its payload schema, so adding a type is
dropping an XSD into ``schemas_xsd/payloads/``: no code, no registration list.
Compiled schemas are kept per thread because lxml validators are not safe to share
across threads, and the REST adapter validates in a thread pool. Compiling is not safe
to run in two threads at once either (libxml2 fails with "Document is not valid XML
Schema" or "not a built-in type", seen in a delivery worker whose threads accepted
registry answers at once), so compiles take turns behind one lock, and ``prepare`` compiles
once on the starting thread, before any pool exists. Each thread compiles each schema
once, so the lock is never on a hot path.
"""
from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path

from lxml import etree

from gateway import errors
from gateway.errors import Rejection

ENVELOPE_NS = "urn://zdravlink/envelope/1.0"


@cache
def schemas_dir() -> Path:
    """Where the XSDs live: ``ZL_SCHEMAS_DIR`` or the repository's ``schemas_xsd`` (read once: asked per message)."""
    override = os.environ.get("ZL_SCHEMAS_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "schemas_xsd"


@cache
def payload_schema_files(directory: Path | None = None) -> dict[str, Path]:
    """Map each payload schema's target namespace to its file (``payloads/``, and ``oms/`` for service acts)."""
    base = directory or schemas_dir()
    found: dict[str, Path] = {}
    for path in sorted([*(base / "payloads").glob("*.xsd"), *(base / "oms").glob("*.xsd")]):
        tns = etree.parse(str(path)).getroot().get("targetNamespace")
        if tns:
            found[tns] = path
    return found


def known_message_types() -> set[str]:
    return set(payload_schema_files())


_local = threading.local()
_compiling = threading.Lock()


def compiled(path: Path) -> etree.XMLSchema:
    """The schema at ``path``, compiled once per thread (see the module docstring)."""
    cache: dict[Path, etree.XMLSchema] = _local.__dict__.setdefault("schemas", {})
    schema = cache.get(path)
    if schema is None:
        with _compiling:
            schema = cache[path] = etree.XMLSchema(etree.parse(str(path)))
    return schema


def prepare() -> None:
    """Compile the envelope schema on this thread, so libxml2's one-time schema set-up is done here."""
    compiled(schemas_dir() / "envelope-1.0.xsd")


def _complaint(schema: etree.XMLSchema) -> tuple[str, str | None]:
    """The detail and element path of the complaint a refusal names: the last one libxml2 logged."""
    # lxml-stubs declare _ErrorLog as an empty class; lxml's has last_error (a _LogEntry, or None).
    err = schema.error_log.last_error  # type: ignore[attr-defined]
    if not err:
        return "invalid", None
    return f"line {err.line}: {err.message}", err.path or None


def validate_envelope(root: etree._Element) -> None:
    schema = compiled(schemas_dir() / "envelope-1.0.xsd")
    if not schema.validate(root):
        detail, path = _complaint(schema)
        raise Rejection(errors.ENVELOPE_INVALID, detail, path or "Envelope")


def validate_payload(message_type: str, payload: etree._Element) -> None:
    """Validate the business payload against the schema of its message type."""
    path = payload_schema_files().get(message_type)
    if path is None:
        raise Rejection(errors.UNKNOWN_MESSAGE_TYPE, f"no schema for message type {message_type!r}", "MessageType",
                        status=422)
    schema = compiled(path)
    if not schema.validate(payload):
        detail, where = _complaint(schema)
        raise Rejection(errors.PAYLOAD_INVALID, detail, where or "MessagePrimaryContent", status=422)
