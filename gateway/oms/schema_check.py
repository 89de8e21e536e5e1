"""A register file against its region's schema, each complaint as a ФЛК error naming its record.

Register files carry no namespace; ProMed's schemas declare one (``OMS-D1``, ``OMS-D2``) for
their own reasons. The schema is never edited: a copy of the file is moved into the
schema's namespace for validation, as schemas_xsd/oms/SOURCES.md explains, and the file
itself is left as it is. Each complaint names the element (IM_POL), its parent (BAS_EL) and
the entry, case, service or patient it sits in, so it can be mapped to records like any
other ФЛК error. ``XSD`` is this gateway's code for a schema complaint: the ФЛК
implementations read for the format leave OSHIB empty there ([MF] SchemaValidationService).
"""
from __future__ import annotations

import copy
from pathlib import Path

from lxml import etree

from gateway.oms.flk import FlkError
from gateway.oms.layout import load_layout
from gateway.schemas import compiled

SCHEMA_ERROR = "XSD"
_CONTEXT = {"ZAP": ("N_ZAP", "n_zap"), "Z_SL": ("IDCASE", "idcase"), "SL": ("SL_ID", "sl_id"),
            "USL": ("IDSERV", "idserv"), "PACIENT": ("ID_PAC", "id_pac"), "PERS": ("ID_PAC", "id_pac")}


def schema_errors(root: etree._Element, xsd: Path) -> list[FlkError]:
    """Every complaint of ``xsd`` about the file ``root``; empty when it is valid."""
    namespace = load_layout(xsd).namespace
    instance = _in_namespace(root, namespace) if namespace else root
    schema = compiled(xsd)
    if schema.validate(instance):
        return []
    found = []
    # lxml-stubs declare _ErrorLog as an empty class; lxml's iterates its _LogEntry records.
    for entry in schema.error_log:  # type: ignore[attr-defined]
        node = _node(instance, entry.path)
        message = entry.message.replace("{%s}" % namespace, "") if namespace else entry.message
        found.append(_located(node if node is not None else instance, message))
    return found


def _in_namespace(root: etree._Element, namespace: str) -> etree._Element:
    moved = copy.deepcopy(root)
    for el in moved.iter(etree.Element):
        el.tag = "{%s}%s" % (namespace, etree.QName(el).localname)
    etree.cleanup_namespaces(moved)
    return moved


def _node(root: etree._Element, path: str | None) -> etree._Element | None:
    """The element libxml2's error path names: ``/ZL_LIST/ZAP[2]/…``, prefixed in a namespace (``/ns0:ZL_LIST``)."""
    try:
        prefixes = {k: v for k, v in root.nsmap.items() if k}
        found = root.getroottree().xpath(path, namespaces=prefixes) if path else []
    except etree.XPathError:
        return None
    return found[0] if isinstance(found, list) and found and isinstance(found[0], etree._Element) else None


def _located(node: etree._Element, message: str) -> FlkError:
    """The error at ``node``, with the keys of every entry, case, service or patient around it."""
    context: dict[str, str] = {}
    for el in (node, *node.iterancestors()):
        holders = [el]
        if etree.QName(el).localname == "ZAP":  # the patient of an entry is a child of it, not an ancestor
            holders += [c for c in el if etree.QName(c).localname == "PACIENT"]
        for holder in holders:
            tag, key = _CONTEXT.get(etree.QName(holder).localname, ("", ""))
            value = next((c.text for c in holder if etree.QName(c).localname == tag), None)
            if key and value and key not in context:
                context[key] = value.strip()
    parent = node.getparent()
    return FlkError(SCHEMA_ERROR, im_pol=etree.QName(node).localname,
                    bas_el=etree.QName(parent).localname if parent is not None else None,
                    comment=message, **context)
