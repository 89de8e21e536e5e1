"""Register file names by the federal rule: ``<type><Pi><Ni><Pp><Np>_<YY><MM><N>``.

The type says what the file holds (``H`` cases, ``L`` the personal data paired with it, ``C``,
``T``, ``D…`` other registers), ``Pi``/``Pp`` who sends and who receives (``M`` a medical
organisation, ``T`` a ТФОМС, ``S`` an insurer), ``Ni``/``Np`` their codes, then the reporting
year and month and the pack number within that period, from 1. The name without extension is
ZGLV/FILENAME, at most 26 characters of ``[A-Za-z0-9_]``; the L-file's FILENAME1 is the H-file's
name; both travel in one ZIP named after the H-file. A ФЛК protocol answering a file is named
``V`` (H-type file) or ``F`` (L-file) followed by that file's name without its first letter.
Sources: ../shared/research/oms-format.md §1 and §4 ([Z75], [MF], [CH], [RZ], [D]).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from gateway.oms import OmsFileError

PARTIES = {"M": "medical organisation", "T": "ТФОМС", "S": "insurer (СМО)"}
MAX_LENGTH = 26
_NAME = re.compile(r"(?P<kind>[A-Z]{1,2}?)(?P<pi>[MTS])(?P<ni>[0-9]+)(?P<pp>[MTS])(?P<np>[0-9A-Za-z]+?)"
                   r"_(?P<yy>[0-9]{2})(?P<mm>0[1-9]|1[0-2])(?P<n>[1-9][0-9]*)")


@dataclass(frozen=True)
class RegisterName:
    kind: str
    sender: str
    sender_code: str
    receiver: str
    receiver_code: str
    year: int
    month: int
    pack: int

    def __post_init__(self) -> None:
        for letter in (self.sender, self.receiver):
            if letter not in PARTIES:
                raise OmsFileError(f"party letter {letter!r} is none of {', '.join(PARTIES)}")
        text = str(self)
        if not re.fullmatch(r"[A-Za-z0-9_]{13,%d}" % MAX_LENGTH, text):
            raise OmsFileError(f"file name {text!r} breaks the rule: 13 to {MAX_LENGTH} characters of "
                               "letters, digits and _")

    def __str__(self) -> str:
        return (f"{self.kind}{self.sender}{self.sender_code}{self.receiver}{self.receiver_code}"
                f"_{self.year % 100:02d}{self.month:02d}{self.pack}")

    @classmethod
    def parse(cls, text: str) -> RegisterName:
        """A name without extension; the century is taken as 20xx, as every register so far."""
        m = _NAME.fullmatch(text)
        if m is None:
            raise OmsFileError(f"{text!r} is not a register file name (<type><M|T|S><code><M|T|S><code>_YYMMN)")
        return cls(m["kind"], m["pi"], m["ni"], m["pp"], m["np"], 2000 + int(m["yy"]), int(m["mm"]), int(m["n"]))

    def paired(self, kind: str) -> RegisterName:
        """The same exchange's file of another type (the L-file of an H-file)."""
        return replace(self, kind=kind)

    @property
    def archive(self) -> str:
        return f"{self}.zip"

    @property
    def xml(self) -> str:
        return f"{self}.xml"

    @property
    def protocol(self) -> str:
        """The ФЛК protocol's name for this file: ``F`` for an L-file, ``V`` for the rest."""
        return ("F" if self.kind.startswith("L") else "V") + str(self)[1:]


def strip_extension(name: str) -> str:
    """``HM…_21041.xml`` or ``.zip`` (any case) → ``HM…_21041``: protocols name files either way."""
    return re.sub(r"\.(xml|zip)$", "", name.strip(), flags=re.IGNORECASE)
