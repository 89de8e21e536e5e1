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

Speed: the tree is walked in one flat loop over ``root.iter()`` (no Python recursion, no
depth limit), tag splits and attribute orders are cached per name, escaping is skipped
unless a special character is present, and the output is joined and encoded once.
"""
from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from zdravlink.errors import SigningError

ALGORITHM = "urn://smev-gov-ru/xmldsig/transform"
XML_NS = "http://www.w3.org/XML/1998/namespace"
_JAVA_TRIMMED = "".join(map(chr, range(0x21)))
_CACHE_LIMIT = 4096  # entries per cache; a cache is emptied when full, so hostile input cannot grow it

# Attribute plan: for each attribute in output order, (index in el.keys(), namespace URI or
# None, the text written before the value: ' name="' or, after the prefix, ':local="').
_Plan = tuple[tuple[int, str | None, str], ...]
_TAGS: dict[str, tuple[str, str]] = {}  # "{uri}local" -> (uri, local)
_PLANS: dict[tuple[str, ...], _Plan] = {}  # attribute names in document order -> plan


class TransformError(SigningError, ValueError):
    """The input cannot be transformed (the reference refuses elements without a namespace)."""


def _split_tag(tag: str) -> tuple[str, str]:
    """``(uri, local)`` of a Clark-notation tag, cached: the same tags repeat throughout a document."""
    if tag[0] != "{":
        raise TransformError(f"element <{tag}> has no namespace; the SMEV transform requires one")
    uri, local = tag[1:].split("}", 1)
    if len(_TAGS) >= _CACHE_LIMIT:
        _TAGS.clear()
    _TAGS[tag] = (uri, local)
    return uri, local


def _java_order(text: str) -> bytes:
    # Java's String.compareTo compares UTF-16 code units; big-endian UTF-16 bytes sort the same way.
    return text.encode("utf-16-be")


def _attribute_plan(names: tuple[str, ...]) -> _Plan:
    """The output order of attributes named ``names``, cached: elements of one kind share their names."""
    keyed: list[tuple[tuple[int, bytes, bytes], int, str | None, str]] = []
    for index, name in enumerate(names):
        if name[0] == "{":
            uri, local = name[1:].split("}", 1)
            keyed.append(((0, _java_order(uri), _java_order(local)), index, uri, f':{local}="'))
        else:  # unqualified attributes after all qualified ones
            keyed.append(((1, _java_order(name), b""), index, None, f' {name}="'))
    keyed.sort()  # names are unique, so the sort keys are too
    plan = tuple((index, uri, before) for _, index, uri, before in keyed)
    if len(_PLANS) >= _CACHE_LIMIT:
        _PLANS.clear()
    _PLANS[names] = plan
    return plan


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _kept_text(text: str | None) -> str:
    """``text`` escaped, or "" when the reference drops it.

    Java's String.trim() strips every character <= U+0020; text that is only that is dropped.
    Checking the first character settles most text without building a stripped copy.
    """
    if not text or (text[0] <= " " and not text.lstrip(_JAVA_TRIMMED)):
        return ""
    if "&" in text or "<" in text or ">" in text:
        return _escape_text(text)
    return text


def transform(root: etree._Element) -> bytes:
    """The transform of ``root`` and its subtree, as UTF-8 bytes without an XML declaration."""
    if not isinstance(root.tag, str):
        raise TypeError(f"the SMEV transform needs an element, not {root!r}")
    out: list[str] = []
    append = out.append
    visible: dict[str, str] = {XML_NS: "xml"}  # namespace URI -> prefix in scope at the current element
    visible_get = visible.get
    counter = 0
    tags, plans = _TAGS, _PLANS
    # Open elements, innermost last: (element, its end tag, the URIs it declared or None).
    # Holding the element keeps its lxml proxy alive, so getparent() returns that same object.
    stack: list[tuple[etree._Element, str, list[str] | None]] = []
    top: etree._Element | None = None  # stack[-1][0]

    def close() -> etree._Element:
        """Write the end tag of the innermost open element and end the mappings it declared."""
        el, end, declared = stack.pop()
        append(end)
        if declared is not None:  # a mapping is visible only below its element
            for uri in declared:
                del visible[uri]  # declared only where it was unmapped, so nothing to restore
        return el

    # root.iter() yields elements, comments, PIs and entity references in document order.
    # Before a node is handled, the open elements that are not its ancestors are closed,
    # each followed by its tail.
    for el in root.iter():
        if top is not None:
            parent = el.getparent()
            while top is not parent:
                append(_kept_text(close().tail))
                top = stack[-1][0]
        tag = el.tag
        if tag.__class__ is not str:  # a comment, PI or entity is dropped, but its tail is text
            append(_kept_text(el.tail))
            continue
        try:
            uri, local = tags[tag]
        except KeyError:
            uri, local = _split_tag(tag)
        declared: list[str] | None = None
        prefix = visible_get(uri)
        if prefix is None:
            counter += 1
            prefix = visible[uri] = f"ns{counter}"
            declared = [uri]
            start = f'<{prefix}:{local} xmlns:{prefix}="{_escape_attr(uri)}"'
        else:
            start = f"<{prefix}:{local}"
        # lxml-stubs type keys() and values() as str | bytes, a Python 2 leftover: lxml returns str on Python 3.
        names: Sequence[str] = el.keys()  # type: ignore[assignment]
        if names:
            try:
                plan = plans[tuple(names)]
            except KeyError:
                plan = _attribute_plan(tuple(names))
            values: Sequence[str] = el.values()  # type: ignore[assignment]  # same order as keys(); see above
            joined = "".join(values)
            escape = "&" in joined or "<" in joined or ">" in joined or '"' in joined
            declarations = ""
            attributes = []
            for index, auri, before in plan:
                value = values[index]
                if escape:
                    value = _escape_attr(value)
                if auri is None:
                    attributes.append(f'{before}{value}"')
                    continue
                aprefix = visible_get(auri)
                if aprefix is None:
                    counter += 1
                    aprefix = visible[auri] = f"ns{counter}"
                    if declared is None:
                        declared = []
                    declared.append(auri)
                    declarations += f' xmlns:{aprefix}="{_escape_attr(auri)}"'
                attributes.append(f' {aprefix}{before}{value}"')
            start = f"{start}{declarations}{''.join(attributes)}"
        append(f"{start}>{_kept_text(el.text)}")
        stack.append((el, f"</{prefix}:{local}>", declared))
        top = el
    while stack:
        el = close()
        if stack:  # the root's tail is outside the transformed subtree
            append(_kept_text(el.tail))
    return "".join(out).encode("utf-8")
