"""An ORU^R01's segments placed in its groups: the patient, each order (OBR group) with its
observations and comments — and every segment that fits nowhere, named.

Segments are placed by HL7 v2.5.1's ORU_R01 structure (with the PRT of later versions):

    MSH [SFT…] [UAC]
    [PID [PD1] [PRT…] [NTE…] [NK1…] [PV1 [PV2] [PRT…]]]           ← NTE here: about the patient
    { [ORC [PRT…]] OBR [NTE…] [PRT…] [TQ1 [TQ2…]…] [CTD]            ← NTE here: about the order
      { OBX [PRT…] [NTE…] }                                          ← NTE here: about that OBX
      [FT1…] [CTI…] { SPM [OBX [NTE…]…] } }                          ← OBX here: about the specimen
    [DSC]

A parser that filed each segment by its name alone would put an OBX that comes before any
OBR under the first order, and drop a line it cannot name (a PID split by a stray carriage
return loses the patient's sex with it). Here nothing is dropped: a segment that cannot
be placed, a second patient, a line that is no segment, and a segment run into another
(``…|F| OBX||TX|…``: a lost separator) are each a ``Problem`` with its place, which the
mapping turns into a gap or, where it allows, a warning. Z-segments the mapping names are
passed over by name, and only those.

Each segment keeps its ordinal among the segments of its name (OBX[3] is the third OBX in
the message), which is how the lab's own tools and ERR-2 count.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import hl7

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
#: A field that is a segment ID after white space: the rest of the segment was run into this one.
_GLUED = re.compile(r"\s+([A-Z][A-Z0-9]{2})\Z")
_ORU_SEGMENTS = {"MSH", "SFT", "UAC", "PID", "PD1", "PRT", "NTE", "NK1", "ARV", "PV1", "PV2", "ORC", "OBR", "TQ1",
                 "TQ2", "CTD", "OBX", "FT1", "CTI", "SPM", "DSC"}


@dataclass(frozen=True)
class Seg:
    """One segment, its name and its ordinal among the segments of that name."""

    name: str
    ordinal: int
    segment: Any

    @property
    def label(self) -> str:
        return f"{self.name}[{self.ordinal}]"


@dataclass(frozen=True)
class Problem:
    """A segment the structure has no place for. ``where`` is the segment (and field) to name
    in ERR-2; ``subject`` the segment ID that was misplaced (for a glued one, the ID inside)."""

    kind: Literal["unplaced", "not-a-segment", "glued", "second-patient"]
    where: Seg
    field: int
    subject: str
    detail: str


@dataclass
class Observation:
    obx: Seg
    group: Literal["result", "specimen"]
    notes: list[Seg] = field(default_factory=list)


@dataclass
class Order:
    obr: Seg
    orc: Seg | None = None
    notes: list[Seg] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    scope: dict[str, Seg] = field(default_factory=dict)  # the first ORC, OBR, SPM, TQ1 … of this order


@dataclass
class Structure:
    msh: Seg
    pid: Seg | None = None
    patient_scope: dict[str, Seg] = field(default_factory=dict)  # MSH, PID, PD1, PV1 …
    patient_notes: list[Seg] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Seg] = field(default_factory=list)


def place(message: hl7.Message, ignore: frozenset[str] = frozenset()) -> Structure:
    """Every segment of ``message`` in its group, or in ``problems``; ``ignore``: Z-segment IDs to pass over."""
    counts: dict[str, int] = {}
    segs: list[Seg] = []
    for segment in message:
        name = str(segment[0]).strip() if len(segment) else ""
        counts[name] = counts.get(name, 0) + 1
        segs.append(Seg(name, counts[name], segment))
    s = _Placer(segs[0], ignore)
    for seg in segs[1:]:
        s.take(seg)
    s.finish()
    return s.structure


class _Placer:
    def __init__(self, msh: Seg, ignore: frozenset[str]) -> None:
        self.structure = Structure(msh=msh, patient_scope={"MSH": msh})
        self.ignore = ignore
        self.state: Literal["header", "patient", "orc", "order", "observation", "tail", "specimen", "done"] = "header"
        self.pending_orc: Seg | None = None
        self.order: Order | None = None
        self.observation: Observation | None = None
        self.last: Seg = msh
        self.unplaced: Seg | None = None  # a segment that fits nowhere takes the comments after it along
        self.done_because = ""
        self._check_glued(msh)

    def problem(self, kind: Any, seg: Seg, detail: str, subject: str | None = None, field_no: int = 0) -> None:
        self.structure.problems.append(Problem(kind, seg, field_no, subject or seg.name, detail))

    def take(self, seg: Seg) -> None:
        if not _SEGMENT_ID.match(seg.name):
            # Named by the segment before it (ERR-2 needs a segment ID), and its text left out:
            # a split PID puts patient data at the start of the line.
            self.problem("not-a-segment", self.last, f"the line after {self.last.label} ({len(str(seg.segment))} "
                         "characters) starts with no segment ID: a segment split by a stray line break?",
                         subject="?")
            return
        self.last = seg
        if seg.name in self.ignore:
            self.structure.ignored.append(seg)
            return
        self._check_glued(seg)
        if self.state == "done":
            self.problem("unplaced", seg, f"{seg.label} {self.done_because}")
            return
        if seg.name == "NTE" and self.unplaced is not None:
            self.problem("unplaced", seg, f"{seg.label} follows {self.unplaced.label}, which has no place")
            return
        handler = getattr(self, f"_{seg.name.lower()}", None)
        placed = seg.name in _ORU_SEGMENTS and handler is not None and handler(seg)
        if seg.name != "PRT" or not placed:
            self.unplaced = None if placed else seg
        if not placed:
            where = {"header": "before any PID or OBR", "patient": "among the patient's segments",
                     "orc": "between ORC and its OBR", "order": "in an order before any OBX",
                     "observation": "after an OBX", "tail": "after the order's FT1/CTI",
                     "specimen": "after SPM"}[self.state]
            known = "" if seg.name in _ORU_SEGMENTS else " (not a segment of ORU^R01)"
            self.problem("unplaced", seg, f"{seg.label}{known} has no place {where}")

    def finish(self) -> None:
        if self.pending_orc is not None:
            self.problem("unplaced", self.pending_orc, f"{self.pending_orc.label} is followed by no OBR")

    # ---- one handler per segment ID: True when the segment was placed --------------------

    def _sft(self, seg: Seg) -> bool:
        return self.state == "header"

    def _uac(self, seg: Seg) -> bool:
        return self.state == "header"

    def _pid(self, seg: Seg) -> bool:
        if self.structure.pid is not None:
            self.problem("second-patient", seg, f"{seg.label} starts the results of a second patient: send one "
                         "patient per message")
            self.state, self.done_because = "done", f"belongs to the second patient ({seg.label})"
            return True
        if self.state != "header":
            return False
        self.structure.pid = seg
        self.structure.patient_scope.setdefault("PID", seg)
        self.state = "patient"
        return True

    def _patient_segment(self, seg: Seg) -> bool:
        if self.state != "patient":
            return False
        self.structure.patient_scope.setdefault(seg.name, seg)
        return True

    _pd1 = _nk1 = _arv = _pv1 = _pv2 = _patient_segment

    def _prt(self, seg: Seg) -> bool:
        return self.state in ("patient", "orc", "order", "observation", "specimen")

    def _nte(self, seg: Seg) -> bool:
        if self.state == "patient":
            self.structure.patient_notes.append(seg)
        elif self.state in ("order", "tail", "specimen") and self.order is not None:
            self.order.notes.append(seg)
        elif self.state == "observation" and self.observation is not None:
            self.observation.notes.append(seg)
        else:
            return False
        return True

    def _orc(self, seg: Seg) -> bool:
        if self.state == "orc" and self.pending_orc is not None:
            self.problem("unplaced", self.pending_orc, f"{self.pending_orc.label} is followed by no OBR")
        self.pending_orc, self.state = seg, "orc"
        return True

    def _obr(self, seg: Seg) -> bool:
        self.order = Order(obr=seg, orc=self.pending_orc, scope={"OBR": seg})
        if self.pending_orc is not None:
            self.order.scope["ORC"] = self.pending_orc
        self.structure.orders.append(self.order)
        self.pending_orc, self.observation, self.state = None, None, "order"
        return True

    def _order_detail(self, seg: Seg) -> bool:
        if self.state != "order" or self.order is None:
            return False
        self.order.scope.setdefault(seg.name, seg)
        return True

    _tq1 = _tq2 = _ctd = _order_detail

    def _obx(self, seg: Seg) -> bool:
        if self.order is None or self.state not in ("order", "observation", "specimen"):
            return False
        group: Literal["result", "specimen"] = "specimen" if self.state == "specimen" or (
            self.state == "observation" and self.observation is not None and self.observation.group == "specimen"
        ) else "result"
        self.observation = Observation(seg, group)
        self.order.observations.append(self.observation)
        self.state = "observation"
        return True

    def _financial(self, seg: Seg) -> bool:
        if self.state not in ("order", "observation", "tail") or self.order is None:
            return False
        self.state = "tail"
        return True

    _ft1 = _cti = _financial

    def _spm(self, seg: Seg) -> bool:
        """An SPM after the order's results opens the specimen group; one before any OBX of its
        order (as Cerner and v2.3-style feeds send it) only describes the specimen, and the OBX
        after it are the order's results, not observations about the specimen."""
        if self.state not in ("order", "observation", "tail", "specimen") or self.order is None:
            return False
        self.order.scope.setdefault("SPM", seg)
        self.observation = None
        self.state = "specimen" if self.order.observations else "order"
        return True

    def _dsc(self, seg: Seg) -> bool:
        self.state, self.done_because = "done", f"comes after {seg.label}, the message's last segment"
        return True

    def _check_glued(self, seg: Seg) -> None:
        """A field ``<space>OBX`` (any segment ID after white space): the next segment was run
        into this one when its separator was lost. Each run-in segment is a problem of its own."""
        for number, fld in enumerate(seg.segment):
            # only a plain field can be "<space>OBX": one with a separator in it is no segment ID
            first = fld if isinstance(fld, str) or len(fld) != 1 else next(iter(fld))
            m = _GLUED.match(first) if number and isinstance(first, str) else None
            if m and (m.group(1) in _ORU_SEGMENTS or m.group(1).startswith("Z")):
                self.problem("glued", seg, f"«{m.group(1)}» at {seg.label}-{number} starts a segment run into "
                             f"{seg.label}: a segment separator is missing", subject=m.group(1), field_no=number)
