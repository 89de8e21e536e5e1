"""Values out of HL7 whole: nulls told from empties, composites with every part."""
from __future__ import annotations

import hl7

from adapters.hl7v2.hl7_values import Values, is_empty, is_null

M = hl7.parse("MSH|^~\\&|A|B|C|D|2020||ORU^R01|1|P|2.5\r"
              'OBX|1|CE|x||^""|""|^^10.0|""~H|&CYTO&JANE^2014|10535^van Beethoven&van^Ludwig^A^III^Dr^PHD|'
              "Kowalski^Adam^Piotr|This\\.br\\is\\T\\ok||ID^EHR^1.2.3^ISO")
OBX = M.segment("OBX")
V = Values(M)


def test_null_empty_and_a_value_are_three_things():
    assert is_null(OBX[5]) and is_null(OBX[6])            # ^"" and ""
    assert not is_null(OBX[7]) and not is_empty(OBX[7])   # ^^10.0
    assert not is_null(OBX[8])                            # ""~H has a flag in it
    assert is_empty(OBX[13]) and not is_null(OBX[13])
    assert V.text(OBX[6]) == "" and V.text(OBX[8], 2) == "H"


def test_composites_whole():
    assert V.whole(OBX[7]) == "^^10.0"
    cnn = V.person(OBX[9])
    assert (cnn.id, cnn.name.family, cnn.name.given) == ("", "CYTO", "JANE")
    xcn = V.person(OBX[10])
    assert (xcn.id, xcn.name.family, xcn.name.given, xcn.name.middle, xcn.name.suffix, xcn.name.prefix,
            xcn.name.degree) == ("10535", "van Beethoven", "Ludwig", "A", "III", "Dr", "PHD")
    name = V.name(OBX[11])
    assert (name.family, name.given, name.middle) == ("Kowalski", "Adam", "Piotr")
    assert V.identifier(OBX[14]) == ("ID", "EHR")


def test_escapes_and_line_breaks():
    assert V.text(OBX[12]) == "This\nis&ok"


def test_escapes_resolved_unknown_ones_kept_and_nothing_logged(caplog):
    assert V.unescape("a\\F\\b\\S\\c\\R\\d\\T\\e\\E\\f") == "a|b^c~d&e\\f"
    assert V.unescape("line\\X0D0A\\next\\.br\\last\\H\\bold\\N\\") == "line\nnext\nlastbold"
    # python-hl7 would drop these and log the field (a name, here) in clear
    with caplog.at_level("DEBUG"):
        assert V.unescape("O\\Brien \\Zx\\ \\C2842\\") == "O\\Brien \\Zx\\ \\C2842\\"
    assert caplog.records == []


def test_escapes_use_the_messages_own_delimiters():
    other = Values(hl7.parse("MSH|*~/&|A|B|C|D|2020||ORU^R01|1|P|2.5"))
    assert other.unescape("a/F/b/S/c/E/d\\e//") == "a|b*c/d\\e//"
