"""Field-by-field comparison of an expected result with an actual one, naming every difference.

A golden file compared as one blob says only "different"; these name the element or JSON key
that differs (``/LabResult/Order[2]/Test[1]/Quantity/Value: '4.4' != '4.40'``), so a failure
points at the field a reviewer has to look at.
"""
from __future__ import annotations

from typing import Any

from lxml import etree


def xml_differences(expected: etree._Element, actual: etree._Element, ignore: frozenset[str] = frozenset(),
                    path: str = "") -> list[str]:
    """Differences in tag, attributes, text and children, element by element; ``ignore``: local names to skip.

    A child is named with its position among its siblings of the same name (``Test[2]``).
    """
    name = etree.QName(expected).localname
    if etree.QName(actual).localname != name:
        return [f"{path}: {etree.QName(actual).localname!r} where {name!r} was expected"]
    out: list[str] = []
    if dict(expected.attrib) != dict(actual.attrib):
        out.append(f"{path}: attributes {dict(expected.attrib)} != {dict(actual.attrib)}")
    if (expected.text or "").strip() != (actual.text or "").strip():
        out.append(f"{path}: {(expected.text or '').strip()!r} != {(actual.text or '').strip()!r}")
    want = [c for c in expected if isinstance(c.tag, str) and etree.QName(c).localname not in ignore]
    got = [c for c in actual if isinstance(c.tag, str) and etree.QName(c).localname not in ignore]
    seen: dict[str, int] = {}
    for i, child in enumerate(want):
        child_name = etree.QName(child).localname
        seen[child_name] = seen.get(child_name, 0) + 1
        where = f"{path}/{child_name}[{seen[child_name]}]"
        if i >= len(got):
            out.append(f"{where}: missing")
        else:
            out += xml_differences(child, got[i], ignore, where)
    out += [f"{path}/{etree.QName(c).localname}: unexpected" for c in got[len(want):]]
    return out


def json_differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Differences key by key and item by item."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(actual)):
            where = f"{path}.{key}" if path else key
            if key not in actual:
                out.append(f"{where}: missing")
            elif key not in expected:
                out.append(f"{where}: unexpected {actual[key]!r}"[:300])
            else:
                out += json_differences(expected[key], actual[key], where)
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        out = [f"{path}: {len(expected)} items != {len(actual)}"] if len(expected) != len(actual) else []
        for i, (e, a) in enumerate(zip(expected, actual)):
            out += json_differences(e, a, f"{path}[{i}]")
        return out
    return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"[:300]]
