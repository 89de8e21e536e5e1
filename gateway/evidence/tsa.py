"""The gateway's client of a time stamping authority: one RFC 3161 request over HTTP, its token checked.

A TSA that is down, slow or answers nonsense is an ``TsaUnavailable``: the
checkpointer keeps the checkpoint and asks again later; the gateway never waits on
a TSA to accept or deliver a message (X-Road stops all traffic when its timestamping
fails for too long; that answer is the operator's alert here, not an outage).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import httpx

from signing import timestamps
from signing.timestamps import Timestamp, TimestampError
from signing.trust import TrustStore
from zdravlink.errors import ExchangeError

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"


class TsaUnavailable(ExchangeError):
    """The TSA did not give a timestamp this time (out of reach, an HTTP error, a token that does not hold)."""


@dataclass(frozen=True)
class Stamped:
    token: bytes
    timestamp: Timestamp


class TsaClient:
    def __init__(self, url: str, trust: TrustStore, timeout: float = 10.0) -> None:
        self.url = url
        self.trust = trust
        self.timeout = timeout

    def stamp(self, data: bytes) -> Stamped:
        """A verified timestamp over SHA-256(``data``), or TsaUnavailable saying why not."""
        nonce = secrets.randbits(63)
        try:
            answer = httpx.post(self.url, content=timestamps.request(data, nonce), timeout=self.timeout,
                                headers={"Content-Type": QUERY_TYPE, "Accept": REPLY_TYPE})
        except httpx.HTTPError as exc:
            raise TsaUnavailable(f"{type(exc).__name__}: {exc}") from None
        if answer.status_code != 200:
            raise TsaUnavailable(f"HTTP {answer.status_code}")
        if answer.headers.get("Content-Type", "").split(";")[0].strip() != REPLY_TYPE:
            raise TsaUnavailable(f"not a timestamp reply ({answer.headers.get('Content-Type')})")
        try:
            token = timestamps.token_of(answer.content)
            stamp = timestamps.verify(token, data, trust=self.trust)
        except TimestampError as exc:
            raise TsaUnavailable(str(exc)) from None
        if stamp.nonce != nonce:
            raise TsaUnavailable("the token answers another request (nonce)")
        return Stamped(token, stamp)
