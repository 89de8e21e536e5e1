"""The layout of a register file, read from the region's own schema, and files written in it.

Regions render the same federal tables with their own elements and, in places, their own
order (ProMed's Bashkortostan schema puts IDSP and SUMV before SL and DOST at the end of
PERS; Zabaykalsky krai's keeps the federal order). Hand-written element sequences would
drift from those schemas one edit at a time. So the writer never decides an order: it
hands over the values it has per element name, and ``render`` emits them in the order
the reference schema declares, refusing a required element nobody filled and, just as
firmly, a value the schema has no place for (a builder bug, or a profile that names an
element its schema lacks).

Only what the OMS schemas use is read: elements with a named or inline complex type
holding one ``sequence``; any other complex type (``simpleContent``) and every simple
type is a leaf.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Union

from lxml import etree

from zdravlink.errors import ConfigurationError

_XS = "{http://www.w3.org/2001/XMLSchema}"

#: What ``render`` takes: per element name, a text, a group of children, or a list of either for
#: an element that repeats. ``None`` means "not given" (the same as leaving the name out).
Value = Union[str, "Values", Sequence[Union[str, "Values"]], None]
Values = Mapping[str, Value]


class LayoutError(ConfigurationError, ValueError):
    """The values do not fit the schema's layout; the message names the element path."""


@dataclass(frozen=True)
class Slot:
    """One element declaration: its name, how often it may occur, and its children in order."""

    name: str
    min: int
    max: int | None  # None: unbounded
    children: tuple[Slot, ...]

    @property
    def leaf(self) -> bool:
        return not self.children

    def child(self, name: str) -> Slot | None:
        return next((c for c in self.children if c.name == name), None)


@dataclass(frozen=True)
class Layout:
    """A file's root slot, and the namespace its schema expects elements in (None for none) for validation."""

    root: Slot
    namespace: str | None
    source: Path

    def slot(self, path: str) -> Slot | None:
        """The slot at ``ZL_LIST/ZAP/Z_SL``-style path, root name first."""
        names = path.split("/")
        if names[0] != self.root.name:
            return None
        node: Slot | None = self.root
        for name in names[1:]:
            node = node.child(name) if node is not None else None
        return node

    def required_paths(self) -> list[str]:
        """Paths of the elements that must appear wherever their parent does (minOccurs ≥ 1)."""
        found: list[str] = []

        def walk(slot: Slot, path: str) -> None:
            for c in slot.children:
                if c.min >= 1:
                    found.append(f"{path}/{c.name}")
                walk(c, f"{path}/{c.name}")

        walk(self.root, self.root.name)
        return found


@cache
def load_layout(xsd: Path) -> Layout:
    """The layout of the first global element of ``xsd`` (the file's root)."""
    doc = etree.parse(str(xsd)).getroot()
    types = {t.get("name"): t for t in doc.findall(f"{_XS}complexType")}
    qualified = doc.get("elementFormDefault") == "qualified"

    def slot(el: etree._Element, trail: tuple[str, ...]) -> Slot:
        name = el.get("name")
        if not name:
            raise LayoutError(f"{xsd.name}: an element under {'/'.join(trail)} has no name (ref is not supported)")
        complex_type = el.find(f"{_XS}complexType")
        if complex_type is None:
            complex_type = types.get((el.get("type") or "").split(":")[-1])
        children: tuple[Slot, ...] = ()
        if complex_type is not None:
            sequence = complex_type.find(f"{_XS}sequence")
            if sequence is not None:
                if any(c.tag in (f"{_XS}choice", f"{_XS}all", f"{_XS}group", f"{_XS}any") for c in sequence):
                    raise LayoutError(f"{xsd.name}: {'/'.join((*trail, name))} uses a content model other than "
                                      "a sequence of elements")
                children = tuple(slot(c, (*trail, name)) for c in sequence.iterchildren(f"{_XS}element"))
        high = el.get("maxOccurs", "1")
        return Slot(name, int(el.get("minOccurs", "1")), None if high == "unbounded" else int(high), children)

    root = doc.find(f"{_XS}element")
    if root is None:
        raise LayoutError(f"{xsd.name}: no global element")
    namespace = doc.get("targetNamespace") if qualified else None
    return Layout(slot(root, ()), namespace, xsd)


def render(layout: Layout, values: Values) -> etree._Element:
    """The root element with ``values`` placed in the schema's order, without a namespace (register files
    have none, whatever a schema declares for itself).

    Raises LayoutError for a required element with no value, a list where the element
    may occur once, or a name the schema has no place for.
    """
    root = etree.Element(layout.root.name)
    _fill(root, layout.root, values, layout.root.name, layout.source.name)
    return root


def _fill(parent: etree._Element, slot: Slot, values: Values, path: str, schema: str) -> None:
    unknown = sorted(k for k, v in values.items() if v not in (None, [], ()) and slot.child(k) is None)
    if unknown:
        raise LayoutError(f"{path}: {schema} has no place for {', '.join(unknown)}")
    for child in slot.children:
        given = values.get(child.name)
        items = list(given) if isinstance(given, (list, tuple)) else [] if given is None else [given]
        where = f"{path}/{child.name}"
        if len(items) < child.min:
            raise LayoutError(f"{where}: required by {schema} ({child.min} at least), nothing fills it")
        if child.max is not None and len(items) > child.max:
            raise LayoutError(f"{where}: {len(items)} given, {schema} allows {child.max}")
        for item in items:
            el = etree.SubElement(parent, child.name)
            if isinstance(item, str):
                if not child.leaf:
                    raise LayoutError(f"{where}: text given for an element with children")
                el.text = item
            else:
                if child.leaf:
                    raise LayoutError(f"{where}: children given for an element that holds text")
                if not isinstance(item, Mapping):
                    raise LayoutError(f"{where}: a list inside a list; give each repetition a text or a mapping")
                _fill(el, child, item, where, schema)
