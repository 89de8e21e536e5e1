"""The official SMEV 3 schemas (version 1.1): namespaces, files, and validation against them.

Requests are validated against the operator's own XSD, unmodified (``schemas_xsd/smev3``),
so a message that real SMEV would take is taken here and one it would refuse is
refused; the gateway's answers are built to validate against the same files. lxml
validators are not thread-safe, so each thread compiles its own (a few ms, once).
"""
from __future__ import annotations

import threading
from pathlib import Path

from lxml import etree

from gateway.schemas import schemas_dir
from gateway.xmlsafe import free_prefix

VERSION = "1.1"
SERVICE_NS = "urn://x-artefacts-smev-gov-ru/services/message-exchange/1.1"
TYPES_NS = "urn://x-artefacts-smev-gov-ru/services/message-exchange/types/1.1"
BASIC_NS = "urn://x-artefacts-smev-gov-ru/services/message-exchange/types/basic/1.1"
FAULTS_NS = "urn://x-artefacts-smev-gov-ru/services/message-exchange/types/faults/1.1"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"

#: Short names used in ``?xsd=`` links, and the files they serve.
FILES = {
    "types": "smev-message-exchange-types-1.1.xsd",
    "basic": "smev-message-exchange-basic-1.1.xsd",
    "faults": "smev-message-exchange-faults-1.1.xsd",
}
WSDL_FILE = "smev-message-exchange-service-1.1.wsdl"

T = "{%s}" % TYPES_NS
B = "{%s}" % BASIC_NS
F = "{%s}" % FAULTS_NS


def smev_element(tag: str, carrying: etree._Element | None = None, *, types: str = "t", basic: str = "b",
                 **attrib: str) -> etree._Element:
    """``T + tag`` declaring SMEV's two namespaces under ``types`` and ``basic``, or ``t1``, ``b1`` … where
    ``carrying`` (the partner's payload it will hold) declares those prefixes for namespaces of its own:
    lxml's append would otherwise give two of the payload's attributes one name (``free_prefix``)."""
    return etree.Element(T + tag, nsmap={free_prefix(types, TYPES_NS, carrying): TYPES_NS,
                                         free_prefix(basic, BASIC_NS, carrying): BASIC_NS}, **attrib)


def smev_dir() -> Path:
    return schemas_dir() / "smev3" / VERSION


def compile_schema(directory: Path) -> etree.XMLSchema:
    """One schema holding the types and faults namespaces of the files in ``directory``."""
    imports = "".join(
        f'<xs:import namespace="{ns}" schemaLocation="{(directory / FILES[name]).resolve().as_uri()}"/>'
        for name, ns in (("types", TYPES_NS), ("faults", FAULTS_NS))
    )
    wrapper = f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">{imports}</xs:schema>'
    return etree.XMLSchema(etree.fromstring(wrapper))


_local = threading.local()


def _schema() -> etree.XMLSchema:
    schema = getattr(_local, "schema", None)
    if schema is None:
        schema = _local.schema = compile_schema(smev_dir())
    return schema


def validation_errors(element: etree._Element, schema: etree.XMLSchema | None = None) -> list[tuple[int, str]]:
    """(line, message) of every XSD error in ``element``; empty when it is valid."""
    checker = schema or _schema()
    if checker.validate(element):
        return []
    return [(e.line, e.message) for e in checker.error_log]
