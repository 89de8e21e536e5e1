"""Our own words in an ACK, made to fit the sender's character set.

An ACK answers in the character set the lab declared (MSH-18), so that its interface
engine can read it. The lab's own values we quote came in that character set and fit;
our words may not: a Cyrillic reason ("СНИЛС fails …") or typographic quotes («»)
encoded as ISO 8859-1 or Windows-1250 would become ``?????``, which tells the lab
nothing. So, in order:

1. the text as it is, when it fits;
2. transliterated: Russian letters by ГОСТ Р 52535.1-2006 (the ICAO Doc 9303 table of
   Russian passports), quotes and dashes to their ASCII forms, accents dropped;
3. failing that, the gap code alone (``UNMAPPED_UNIT``), which the lab can look up in
   docs/onboarding-a-lab.md — codes only, never question marks.
"""
from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable

_RUSSIAN = {
    "А": "A", "Б": "B", "В": "V", "Г": "G", "Д": "D", "Е": "E", "Ё": "E", "Ж": "ZH", "З": "Z", "И": "I",
    "Й": "I", "К": "K", "Л": "L", "М": "M", "Н": "N", "О": "O", "П": "P", "Р": "R", "С": "S", "Т": "T",
    "У": "U", "Ф": "F", "Х": "KH", "Ц": "TS", "Ч": "CH", "Ш": "SH", "Щ": "SHCH", "Ъ": "IE", "Ы": "Y",
    "Ь": "", "Э": "E", "Ю": "IU", "Я": "IA",
}
_TABLE = {**{ord(k): v for k, v in _RUSSIAN.items()},
          **{ord(k.lower()): v.lower() for k, v in _RUSSIAN.items()},
          **{ord(c): '"' for c in "«»„“”"}, **{ord(c): "'" for c in "‘’‚"},
          **{ord(c): "-" for c in "‐‑‒–—−"}, ord("…"): "...", ord("№"): "No.", ord("→"): "->",
          ord("\u00a0"): " "}
_CODE = re.compile(r"^[A-Z][A-Z0-9_]*(?=: )")


def fits(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def transliterate(text: str, keep: Callable[[str], bool] = lambda c: c.isascii()) -> str:
    """The characters ``keep`` refuses in ASCII: Cyrillic and typography by the table, others without accents.

    A capital whose Latin form has several letters is capitalised like the word it starts:
    «Щёлково» → Shchelkovo, «СНИЛС» → SNILS.
    """
    out = []
    for i, c in enumerate(text):
        if keep(c):
            out.append(c)
            continue
        latin = c.translate(_TABLE)
        if len(latin) > 1 and latin.isupper() and text[i + 1:i + 2].islower():
            latin = latin.capitalize()
        decomposed = unicodedata.normalize("NFKD", latin)
        out.append("".join(d for d in decomposed if not unicodedata.combining(d)))
    return "".join(out)


def fit(text: str, codec: str) -> str:
    """``text`` as the charset can carry it: unchanged, transliterated, or its leading code alone.

    Only the characters that do not fit are transliterated: a lab's own "é" stays in Latin-1.
    """
    codec = codecs.lookup(codec).name
    if fits(text, codec):
        return text
    plain = transliterate(text, keep=lambda c: fits(c, codec))
    if fits(plain, codec):
        return plain
    code = _CODE.match(text)
    return code.group(0) if code else ""
