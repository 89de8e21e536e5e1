"""The SMEV transform ``urn://smev-gov-ru/xmldsig/transform``, applied after exc-c14n when signing.

It follows the reference ``SmevTransformSpi`` (rules in
``../shared/reference/smev3/transform-vectors/README.md``): declarations, comments and
processing instructions are dropped, so is whitespace-only text; every end tag is written;
prefixes are renamed ``ns1, ns2 …`` from one counter, a mapping being visible only below
the element that declared it; qualified attributes come first, sorted by namespace URI and
local name, then unqualified ones by local name, comparing UTF-16 code units as Java does.

Unlike the PyPI ports, the output is always well-formed: text escapes ``& < >`` and
attribute values ``& < > "`` (what the JDK's StAX writer does), and the ``xml:`` namespace
keeps its reserved prefix, because binding it to ``nsN`` is forbidden by Namespaces in XML.
Tabs and newlines in attribute values are written raw, as the JDK writer does.
"""
from __future__ import annotations

from lxml import etree

ALGORITHM = "urn://smev-gov-ru/xmldsig/transform"
XML_NS = "http://www.w3.org/XML/1998/namespace"
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})
_JAVA_TRIMMED = "".join(map(chr, range(0x21)))


class TransformError(ValueError):
    """The input cannot be transformed (the reference refuses elements without a namespace)."""


def _java_order(text: str) -> bytes:
    # Java's String.compareTo compares UTF-16 code units; big-endian UTF-16 bytes sort the same way.
    return text.encode("utf-16-be")


def _keep(text: str | None) -> bool:
    # Java's String.trim() strips every character <= U+0020; text that is only that is dropped.
    return bool(text) and bool(text.lstrip(_JAVA_TRIMMED))


def transform(root: etree._Element) -> bytes:
    """The transform of ``root`` and its subtree, as UTF-8 bytes without an XML declaration."""
    out: list[str] = []
    counter = 0
    visible: dict[str, str] = {XML_NS: "xml"}  # namespace URI -> prefix in scope at the current element

    def declare(uri: str, undo: list[tuple[str, str | None]]) -> str:
        nonlocal counter
        counter += 1
        undo.append((uri, visible.get(uri)))
        visible[uri] = f"ns{counter}"
        return visible[uri]

    def text(value: str | None) -> None:
        if _keep(value):
            out.append(value.translate(_TEXT_ESCAPES))  # type: ignore[union-attr]

    def element(el: etree._Element) -> None:
        tag = el.tag
        if tag[0] != "{":
            raise TransformError(f"element <{tag}> has no namespace; the SMEV transform requires one")
        uri, local = tag[1:].split("}", 1)
        undo: list[tuple[str, str | None]] = []
        prefix = visible.get(uri)
        start = []
        if prefix is None:
            prefix = declare(uri, undo)
            start.append(f' xmlns:{prefix}="{uri.translate(_ATTR_ESCAPES)}"')
        if el.attrib:
            qualified: list[tuple[bytes, bytes, str, str, str]] = []
            plain: list[tuple[bytes, str, str]] = []
            for name, value in el.attrib.items():
                if name[0] == "{":
                    auri, alocal = name[1:].split("}", 1)
                    qualified.append((_java_order(auri), _java_order(alocal), auri, alocal, value))
                else:
                    plain.append((_java_order(name), name, value))
            qualified.sort()
            plain.sort()
            attrs: list[str] = []
            for _, _, auri, alocal, value in qualified:
                ap = visible.get(auri)
                if ap is None:
                    ap = declare(auri, undo)
                    start.append(f' xmlns:{ap}="{auri.translate(_ATTR_ESCAPES)}"')
                attrs.append(f' {ap}:{alocal}="{value.translate(_ATTR_ESCAPES)}"')
            for _, name, value in plain:
                attrs.append(f' {name}="{value.translate(_ATTR_ESCAPES)}"')
            start.extend(attrs)
        out.append(f"<{prefix}:{local}{''.join(start)}>")
        text(el.text)
        for child in el:
            if isinstance(child.tag, str):
                element(child)
            text(child.tail)  # a comment's or PI's tail is text too; the node itself is dropped
        for uri_, previous in reversed(undo):  # a mapping is visible only below its element
            if previous is None:
                del visible[uri_]
            else:
                visible[uri_] = previous
        out.append(f"</{prefix}:{local}>")

    element(root)
    return "".join(out).encode("utf-8")
