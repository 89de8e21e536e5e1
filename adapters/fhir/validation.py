"""Is this FHIR? fhir.resources' R4B models plus the checks they skip, in two named modes.

* ``STRICT`` — for what the gateway emits. Every literal reference must resolve inside
  the Bundle (FHIR R4 bundle.html#references): a recipient gets one Bundle per lab
  result and nothing to fetch, so a reference it cannot follow is our bug.
* ``LENIENT`` — for checking what others send or publish. Valid FHIR may point outside
  its Bundle (HL7's own f001 report lists Observations it does not carry), so references
  are not resolved; everything else is checked the same.

Both modes check the R4B model of the resource and of each entry, and the required code
bindings the models skip (a ``code`` is any token to them: ``Observation.status = "bogus"``
passes). fhir.resources 8 has no 4.0.1 models; its R4B ones are used, and every R4 example
in ``tests/data/fhir`` passes them in the lenient mode. FHIRPath invariants are not
evaluated.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from zdravlink.errors import RefusedError

Mode = Literal["strict", "lenient"]
STRICT: Mode = "strict"
LENIENT: Mode = "lenient"

_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")


class FhirInvalid(RefusedError, ValueError):
    """FHIR content a recipient should not get; ``errors`` says what is wrong, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


#: Required value-set bindings of the elements a lab Bundle uses. fhir.resources models a
#: ``code`` as any token, so ``Observation.status = "bogus"`` passes it; these lists are R4's.
_REQUIRED_CODES: dict[str, dict[str, frozenset[str]]] = {
    "Bundle": {"type": frozenset({"document", "message", "transaction", "transaction-response", "batch",
                                  "batch-response", "history", "searchset", "collection"})},
    "DiagnosticReport": {"status": frozenset({"registered", "partial", "preliminary", "final", "amended",
                                              "corrected", "appended", "cancelled", "entered-in-error",
                                              "unknown"})},
    "Observation": {
        "status": frozenset({"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                             "entered-in-error", "unknown"}),
        "valueQuantity.comparator": frozenset({"<", "<=", ">=", ">"}),
    },
    "Patient": {"gender": frozenset({"male", "female", "other", "unknown"})},
    "OperationOutcome": {
        "issue.severity": frozenset({"fatal", "error", "warning", "information"}),
        "issue.code": frozenset({"invalid", "structure", "required", "value", "invariant", "security", "login",
                                 "unknown", "expired", "forbidden", "suppressed", "processing", "not-supported",
                                 "duplicate", "multiple-matches", "not-found", "deleted", "too-long",
                                 "code-invalid", "extension", "too-costly", "business-rule", "conflict",
                                 "transient", "lock-error", "no-store", "exception", "timeout", "incomplete",
                                 "throttled", "informational"}),
    },
    "Specimen": {"status": frozenset({"available", "unavailable", "unsatisfactory", "entered-in-error"})},
    "ServiceRequest": {
        "status": frozenset({"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}),
        "intent": frozenset({"proposal", "plan", "directive", "order", "original-order", "reflex-order",
                             "filler-order", "instance-order", "option"}),
        "priority": frozenset({"routine", "urgent", "asap", "stat"}),
    },
}

_RESTFUL = re.compile(r"(?P<base>https?://\S+)/[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?")
_RELATIVE = re.compile(r"(?P<target>[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?")
_HISTORY = re.compile(r"/_history/[^/]+$")


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _values_at(node: Any, path: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _values_at(item, path)
    elif not path:
        yield node
    elif isinstance(node, Mapping) and path[0] in node:
        yield from _values_at(node[path[0]], path[1:])


def _resource_errors(resource: Any, where: str) -> list[str]:
    """The library's verdict on one resource by its own model class, then the bindings it skips."""
    place = where or "resource"
    if not isinstance(resource, Mapping):
        return [f"{place}: not a JSON object"]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return [f"{place}: no resourceType"]
    try:
        model = get_fhir_model_class(rtype)
    except ValueError:
        model = None
    if model is None or not issubclass(model, Resource):
        return [f"{place}: unknown resourceType {rtype!r}"]
    label = f"{where} ({rtype})" if where else rtype
    errors: list[str] = []
    shell, entries = resource, []
    if rtype == "Bundle" and isinstance(resource.get("entry"), list):
        # Entries are checked one by one below: the Bundle model types entry.resource loosely
        # (no resourceType passes as a bare Resource) and crashes on an unknown resourceType.
        entries = resource["entry"]
        shell = {**resource, "entry": [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, Mapping)
                                       else e for e in entries]}
    try:
        model.model_validate(shell)
    except ValidationError as exc:
        errors += [f"{label}: {_loc(err['loc'])}: {err['msg']}" if err["loc"] else f"{label}: {err['msg']}"
                   for err in exc.errors()]
    for element, allowed in _REQUIRED_CODES.get(rtype, {}).items():
        for value in _values_at(resource, element.split(".")):
            if isinstance(value, str) and value not in allowed:
                errors.append(f"{label}: {element}: {value!r} is not a code of its required value set "
                              f"({', '.join(sorted(allowed))})")
    for i, entry in enumerate(entries):
        prefix = f"{where}.entry[{i}]" if where else f"entry[{i}]"
        if not isinstance(entry, Mapping):
            continue  # the model has said so already
        if "resource" in entry:
            errors += _resource_errors(entry["resource"], prefix + ".resource")
        elif "request" not in entry and "response" not in entry:
            errors.append(f"{prefix}: an entry needs a resource unless it has a request or response (bdl-5)")
    return errors


def _references(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        if isinstance(node.get("reference"), str):
            yield path, node["reference"]
        for key, value in node.items():
            yield from _references(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _references(item, f"{path}[{i}]")


def _resolves(ref: str, base: str | None, full_urls: set[str], contained: set[str]) -> bool:
    """FHIR R4's rules for resolving a reference inside a Bundle (bundle.html#references)."""
    if ref.startswith("#"):
        return ref == "#" or ref[1:] in contained
    if _ABSOLUTE_URI.fullmatch(ref):
        return _HISTORY.sub("", ref) in full_urls
    relative = _RELATIVE.fullmatch(ref)
    # A relative reference has a meaning in a Bundle only beside a RESTful fullUrl.
    return bool(relative and base) and f"{base}/{relative['target']}" in full_urls


def _dangling(resource: Mapping[str, Any]) -> list[str]:
    if resource.get("resourceType") == "Bundle":
        entries = resource.get("entry")
        located = [(f"entry[{i}].resource", e.get("resource"), e.get("fullUrl"))
                   for i, e in enumerate(entries if isinstance(entries, list) else []) if isinstance(e, Mapping)]
    else:
        located = [("", resource, None)]
    full_urls = {_HISTORY.sub("", url) for _, _, url in located if isinstance(url, str)}
    errors: list[str] = []
    for where, res, url in located:
        if not isinstance(res, Mapping):
            continue
        restful = _RESTFUL.fullmatch(url) if isinstance(url, str) else None
        contained = {c.get("id") for c in res.get("contained") or [] if isinstance(c, Mapping)}
        label = f"{where} ({res.get('resourceType')})" if where else str(res.get("resourceType"))
        for path, ref in _references(res, ""):
            if not _resolves(ref, restful["base"] if restful else None, full_urls, contained):
                errors.append(f"{label}: {path}: reference {ref!r} resolves to no Bundle entry or contained resource")
    return errors


def validate_bundle(data: Mapping[str, Any], *, mode: Mode) -> None:
    """Raise :class:`FhirInvalid` unless ``data`` is valid FHIR in ``mode``; silent when it is.

    The mode has no default on purpose: "valid" means different things for what we emit
    (``STRICT``) and for what others publish (``LENIENT``), and a caller must say which.
    A bare resource (as two of HL7's examples are) goes through the same checks as a Bundle.
    """
    if mode not in (STRICT, LENIENT):
        raise ValueError(f"mode must be {STRICT!r} or {LENIENT!r}, not {mode!r}")
    errors = _resource_errors(data, "")
    if mode == STRICT and isinstance(data, Mapping):
        errors += _dangling(data)
    if errors:
        raise FhirInvalid(errors)
