"""An HL7 v2 ORU^R01 message → the lab result, by the lab's mapping file.

Parsing is lenient (python-hl7: real feeds break the standard in small ways, and
hl7apy's strict mode rejects most of them); the checks that matter are ours and
name what they refuse. Every gap is collected, not just the first, so the lab sees
in one NAK everything its mapping or its message lacks.

The message keeps its clinical meaning: each OBR group is an Order of its own (numbers,
service, times, status, tests, comments), statuses are never raised (``result_statuses``),
values say why they are missing (``oru_observation``), the lab's NTE comments become
Notes, and every OBR, OBX and NTE of the input is either in the result (its ``source``
attribute says which one it is) or named in a gap or a warning (``oru_structure``).
"""
from __future__ import annotations

from dataclasses import dataclass

import hl7
from lxml import etree

from adapters.hl7v2.hl7_values import Coded, Values, field_of, hl7_date, hl7_datetime, repetitions
from adapters.hl7v2.message_ids import message_id_for
from adapters.hl7v2.oru_context import LAB_RESULT_NS, Context, Gap, L, sub
from adapters.hl7v2.oru_observation import ObservationBuilder, coded_element, name_element, notes, person_element
from adapters.hl7v2.oru_structure import Order, Seg, Structure, place
from adapters.hl7v2.result_statuses import OBSERVATION_STATUSES, ORDER_STATUSES, is_final, least_final, order_status
from adapters.mapping.lab_mapping import Hl7Path, LabMapping, Location
from gateway.identifiers import enp_valid, snils_valid
from zdravlink.errors import RefusedError

__all__ = ["LAB_RESULT_NS", "Gap", "Mapped", "MappingGaps", "control_id", "map_message", "message_id_for"]

_PROBLEM_CODES = {"unplaced": "SEGMENT_UNPLACED", "not-a-segment": "SEGMENT_UNREADABLE", "glued": "SEGMENT_RUN_IN",
                  "second-patient": "SECOND_PATIENT"}
_ORDER_STATUS_WORDS = {"O": "order received", "I": "in progress", "S": "scheduled", "A": "some results available",
                       "P": "preliminary", "R": "not verified", "C": "corrected", "F": "final", "X": "cancelled"}


class MappingGaps(RefusedError):
    """What stands in the way of a lab result; ``warnings`` are the things that would have been let
    through, and ``payload`` the result as far as it could be built (never sent: for inspection)."""

    def __init__(self, gaps: list[Gap], warnings: list[Gap] | None = None,
                 payload: etree._Element | None = None) -> None:
        super().__init__("; ".join(f"{g.where}: {g.reason}" for g in gaps))
        self.gaps = gaps
        self.warnings = warnings or []
        self.payload = payload


@dataclass
class Mapped:
    payload: etree._Element
    recipient: str
    message_id: str
    control_id: str
    warnings: list[Gap]


def control_id(message: hl7.Message) -> str:
    """MSH-10 as the lab knows it, unescaped and stripped; HL7's null ``""`` is no control id.

    Unescaped, so that a JSON ``messageId`` with a ``|`` in it is the same id by either route.
    """
    return Values(message).text(field_of(message.segment("MSH"), 10))


def map_message(message: hl7.Message, mapping: LabMapping) -> Mapped:
    """The lab result for ``message``, or MappingGaps listing everything that stands in the way.

    The MessageID is derived from the lab and MSH-10, so a message the lab resends (its ACK
    was lost) is recognised by the journal as the same message; a message without MSH-10
    cannot be recognised again and is refused.
    """
    control = control_id(message)
    structure = place(message, frozenset(mapping.ignore_segments))
    ctx = Context(Values(message), mapping, control)
    if not control:
        ctx.gap("CONTROL_ID_MISSING", "MSH-10 (message control id) is empty: without it a resend cannot be told "
                "from a new message", structure.msh, 10)
    builder = _ResultBuilder(ctx, structure)
    payload = builder.build()
    recipient = recipient_of(ctx, structure, mapping)
    if ctx.errors:
        raise MappingGaps(ctx.errors, ctx.warnings, payload)
    return Mapped(payload, recipient, message_id_for(mapping.lab, control), control, ctx.warnings)


def recipient_of(ctx: Context, structure: Structure, mapping: LabMapping) -> str:
    r = mapping.recipient
    if r.fixed:
        return r.fixed
    scopes = ([structure.orders[0].scope] if structure.orders else []) + [structure.patient_scope]
    value, found = ctx.text(r.from_field, *scopes)
    target = r.map.get(value)
    if target is None:
        path = found.path if found is not None else (r.from_field.anyOf[0] if r.from_field else Hl7Path(path="MSH-5"))
        name, number, _, comp, _ = path.parts
        ctx.gaps.append(Gap("RECIPIENT_UNKNOWN", name, found.seg.ordinal if found else 1, number, comp,
                            f"{value or '(empty)'!r} is not in the mapping's recipient.map: which MIS should "
                            "receive this result?"))
        return ""
    return target


class _ResultBuilder:
    def __init__(self, ctx: Context, structure: Structure) -> None:
        self.ctx = ctx
        self.s = structure
        self.m = ctx.mapping
        self.v = ctx.values
        self.order_ids: set[str] = set()

    def build(self) -> etree._Element:
        root = etree.Element(L + "LabResult", nsmap={"lr": LAB_RESULT_NS})
        sub(root, "ResultId", f"{self.m.lab}:{self.ctx.control_id or '(no MSH-10)'}"[:200])
        status_el = sub(root, "Status")
        self._problems()
        self._patient(root)
        lab = sub(root, "Laboratory")
        sub(lab, "Mnemonic", self.m.lab)
        if self.m.frmo_oid:
            sub(lab, "FrmoOid", self.m.frmo_oid)
        statuses = [self._order(root, order, n) for n, order in enumerate(self.s.orders, 1)]
        if not self.s.orders:
            self.ctx.gap("NO_RESULTS", "the message has no OBR: no order, no result", self.s.msh)
        status_el.text = least_final(s for s in statuses if s) or "X"
        for w in self.ctx.warnings:
            warning = sub(root, "Warning")
            sub(warning, "Code", w.code)
            sub(warning, "Where", w.where)
            sub(warning, "Text", w.reason[:4000])
        return root

    def _problems(self) -> None:
        for p in self.s.problems:
            severity = "W" if self.m.unplaced_segments == "warning" and p.kind != "second-patient" else "E"
            self.ctx.gap(_PROBLEM_CODES[p.kind], p.detail, p.where, p.field, severity=severity)

    # ---- the patient ----------------------------------------------------------------------

    def _patient(self, root: etree._Element) -> None:
        p = self.m.fields.patient
        scope = self.s.patient_scope
        el = sub(root, "Patient")
        found = self.ctx.find(p.name, scope)
        if found is not None:
            # the first repetition with a name: an animal's legal name is empty, its name is the next one
            names = (self.v.name(found.field, r) for r in range(1, repetitions(found.field) + 1))
            name_element(el, "Name", next((n for n in names if n), None))
        snils, snils_at = self.ctx.text(p.snils, scope)
        enp, enp_at = self.ctx.text(p.enp, scope)
        local, _ = self.ctx.text(p.local_id, scope)
        snils = snils.replace("-", "").replace(" ", "")
        if snils and not snils_valid(snils):
            self.ctx.gap_at("PATIENT_ID_INVALID", "СНИЛС fails its check digits (or is not 11 digits)", snils_at)
            snils = ""
        if enp and not enp_valid(enp):
            self.ctx.gap_at("PATIENT_ID_INVALID", "ЕНП fails its check digit (or is not 16 digits)", enp_at)
            enp = ""
        if not (snils or enp or local) and not any(g.code == "PATIENT_ID_INVALID" for g in self.ctx.gaps):
            where = self.s.pid or self.s.msh
            self.ctx.gap("PATIENT_ID_MISSING", "no patient identifier: the mapping's СНИЛС, ЕНП and local id "
                         "locations are all empty", where, 3 if self.s.pid else 0, 1 if self.s.pid else None)
        if snils:
            sub(el, "SNILS", snils)
        if enp:
            sub(el, "ENP", enp)
        if local:
            assigner, _ = self.ctx.text(p.local_id_assigner, scope)
            sub(el, "LocalId", local[:200], assigner=assigner)
        birth, birth_at = self.ctx.text(p.birth_date, scope)
        if birth:
            date = hl7_date(birth)
            if date is None:
                # the value itself is patient data: say what is wrong with it, not what it is
                self.ctx.gap_at("VALUE_INVALID", f"the birth date ({len(birth)} characters) is not a valid YYYYMMDD "
                                "date", birth_at)
            else:
                sub(el, "BirthDate", date)
        sex, _ = self.ctx.text(p.sex, scope)
        if sex:
            sub(el, "Sex", {"M": "male", "F": "female"}.get(sex.upper()[:1], "unknown"))
        notes(el, self.ctx, self.s.patient_notes)

    # ---- one order ----------------------------------------------------------------------------

    def _order(self, root: etree._Element, order: Order, n: int) -> str | None:
        f = self.m.fields
        scopes = (order.scope, self.s.patient_scope)
        el = sub(root, "Order", source=order.obr.label)
        placer = self._number(f.order.placer, scopes)
        filler = self._number(f.order.filler, scopes)
        order_id = f"{self.m.lab}:{filler[0] or placer[0] or f'{self.ctx.control_id}#{n}'}"[:195]
        if order_id in self.order_ids:
            # two orders of one message under one number: each must stay addressable on its own
            self.ctx.gap("ORDER_ID_REPEATED", f"{order.obr.label} has the same order number as an earlier order of "
                         f"this message; it is told apart as {order_id}#{n}", order.obr, 3 if filler[0] else 2,
                         severity="W")
            order_id = f"{order_id}#{n}"
        self.order_ids.add(order_id)
        sub(el, "OrderId", order_id)
        status_el = sub(el, "Status")
        if placer[0]:
            sub(el, "PlacerNumber", placer[0][:200], assigner=placer[1])
        if filler[0]:
            sub(el, "FillerNumber", filler[0][:200], assigner=filler[1])
        service = self._coded(f.order.service, scopes)
        if service:
            coded_element(el, "Service", service)
        specimen_type = self._coded(f.specimen_type, scopes)
        collected = self._when(f.collected_at, scopes)
        if specimen_type or collected:
            spec = sub(el, "Specimen")
            if specimen_type:
                coded_element(spec, "Type", specimen_type)
            if collected:
                sub(spec, "CollectedAt", collected)
        for tag, location in (("Requester", f.order.requester), ("Performer", f.performer)):
            found = self.ctx.find(location, *scopes)
            if found is not None:
                person = self.v.person(found.field)
                if person:
                    person_element(el, tag, person)
        for tag, location in (("ObservedAt", f.observed_at), ("ReportedAt", f.reported_at)):
            when = self._when(location, scopes)
            if when:
                sub(el, tag, when)
        sent_raw, sent = self._sent_status(order.obr)
        tests = ObservationBuilder(self.ctx, order.scope, service, sent, order.obr)
        built = [(tests.build(el, obs), obs.obx.label) for obs in order.observations]
        test_statuses = [status for status, _ in built if status]
        notes(el, self.ctx, order.notes)
        status, lowered = order_status(sent, test_statuses)
        if status is None and self.m.status_when_missing:
            status = OBSERVATION_STATUSES[self.m.status_when_missing]
        if status is None:
            self.ctx.gap("STATUS_MISSING", f"{order.obr.label} has no status (OBR-25) and no test that says one",
                         order.obr, 25)
            return None
        if not order.observations and not order.notes and (is_final(status) or status in ("P", "R", "S")):
            self.ctx.gap("NO_RESULTS", f"{order.obr.label} is reported {sent_raw or status} but carries no OBX and no "
                         "NTE: where are its results?", order.obr, 25 if sent_raw else 0)
        status_el.text = status
        if sent_raw:
            status_el.set("hl7", sent_raw)
        if lowered or (sent is None and test_statuses):
            status_el.set("derived", "results")
        if lowered:
            least = least_final(test_statuses)
            behind = next(label for s, label in built if s == least)
            self.ctx.gap("STATUS_LOWERED", f"OBR-25 says {sent_raw} ({_ORDER_STATUS_WORDS.get(sent_raw.upper(), '?')}) "
                         f"while {behind} is {least}: the order goes out as {status}, never more final than its "
                         "tests", order.obr, 25, severity="W")
        return status

    def _sent_status(self, obr: Seg) -> tuple[str, str | None]:
        raw = self.v.text(field_of(obr.segment, 25))
        if not raw:
            return "", None
        status = ORDER_STATUSES.get(raw.upper())
        if status is None:
            why = ("means the lab has no order or no patient on record: it answers a query and is no result"
                   if raw.upper() in ("Y", "Z") else f"is not an HL7 table 0123 code ({', '.join(ORDER_STATUSES)})")
            self.ctx.gap("VALUE_INVALID", f"order status «{raw}» {why}", obr, 25)
        return raw, status

    def _number(self, location: Location | None, scopes: tuple[dict[str, Seg], ...]) -> tuple[str, str]:
        found = self.ctx.find(location, *scopes)
        if found is None:
            return "", ""
        if found.whole_field:
            return self.v.identifier(found.field)
        return self.ctx.text_at(found.field, found.path), ""

    def _coded(self, location: Location | None, scopes: tuple[dict[str, Seg], ...]) -> Coded:
        found = self.ctx.find(location, *scopes)
        if found is None:
            return Coded()
        if found.whole_field:
            return self.v.coded(found.field)
        return Coded(code=self.ctx.text_at(found.field, found.path))

    def _when(self, location: Location | None, scopes: tuple[dict[str, Seg], ...]) -> str | None:
        value, found = self.ctx.text(location, *scopes)
        if not value or found is None:
            return None
        when = hl7_datetime(value, self.m.timezone)
        if when is None:
            self.ctx.gap_at("VALUE_INVALID", f"{value!r} is not an HL7 date/time (YYYYMMDDHHMM[SS][+ZZZZ])", found)
        return when

