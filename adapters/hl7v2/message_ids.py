"""MessageIDs for messages the gateway derives from a laboratory's own (HL7 MSH-10, the JSON messageId).

Two rules meet here. The envelope schema (``schemas_xsd/envelope-1.0.xsd``), like SMEV 3,
wants a time-based UUID (version 1, variant RFC 4122, lower case) — a clinic validating
against the published schema refuses anything else. And a lab resends a message whose ACK
it did not get: the resend must land on the same MessageID, so the journal recognises it
and delivers it once (deduplication keyed by lab and control id).

So the UUID v1 is built deterministically from ``lab|control id`` instead of from the
clock and the network card. Its 60-bit timestamp, 14-bit clock sequence and 48-bit node all
come from SHA-256 of that key, with RFC 4122's rules for a node that is not a MAC address
(§4.5: the multicast bit set) and the timestamp kept under 2⁵⁶ ticks, i.e. before 1812:
a derived MessageID is recognisable at a glance, and never "from the future" for anyone
who checks a UUID's age (the gateway checks it only on MessageIDs that arrive by SMEV, which
these never are). 117 bits come from the hash: two different keys share an id with a
probability of about 10⁻¹⁸ over a billion messages.

Not chosen, and why:

* the message's own time (MSH-7) in the timestamp: interface engines restamp MSH-7 when
  an operator resends, and the resend would then be delivered a second time;
* a fresh ``uuid1()`` remembered per (lab, control id) in the journal: it needs a table,
  a migration and a lookup before every accept, and ``zdravlink map`` could no longer print
  the id a message will get. The deterministic id has the same effect without state.
"""
from __future__ import annotations

import hashlib
import uuid

_TIME_BITS = 56  # under 2**56 ticks of 100 ns after 1582-10-15: before 1812
_MULTICAST = 0x010000000000


def derived_uuid1(key: str) -> uuid.UUID:
    """A version-1 UUID that is a pure function of ``key``."""
    n = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:15], "big")  # 120 bits
    timestamp = n >> (120 - _TIME_BITS)
    clock_seq = (n >> (120 - _TIME_BITS - 14)) & 0x3FFF
    node = (n & ((1 << 48) - 1)) | _MULTICAST
    return uuid.UUID(fields=(timestamp & 0xFFFFFFFF, (timestamp >> 32) & 0xFFFF, (timestamp >> 48) & 0x0FFF,
                             clock_seq >> 8, clock_seq & 0xFF, node), version=1)


def message_id_for(lab: str, control_id: str) -> str:
    """The MessageID of the lab's message with this control id: the same for every resend.

    A lab mnemonic never contains ``|`` (its pattern forbids it), so the key is unambiguous.
    """
    return str(derived_uuid1(f"zdravlink-lab-message|{lab}|{control_id}"))
