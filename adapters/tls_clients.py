"""Outbound HTTP clients that carry a channel's TLS settings: httpx (REST, FHIR, ФРМР) and requests (zeep: SOAP, ФРМО).

Each distinct ``tls`` setting gets its SSL context once (``gateway.tls.ClientContexts``)
and its own connection pool, so two channels to one host with different client
certificates never share a connection. A channel without ``tls`` keeps the client it
always had. Hostname verification is on in every context; pins are checked right after
the handshake, before a byte of the request is sent (``gateway.tls.PinnedSocket``).
"""
from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from typing import Any

import httpx
import requests
from requests.adapters import HTTPAdapter

from gateway.tls import ClientContexts, ClientTls


class TlsAdapter(HTTPAdapter):
    """A requests adapter that connects with one SSL context, and nothing else.

    requests would otherwise load certifi's CAs into the connection (``cert_verify``)
    and pass its own client certificate settings; here the context alone decides.
    """

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self.context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self.context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self.context
        return super().proxy_manager_for(proxy, **kwargs)

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None
                                             ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, _ = super().build_connection_pool_key_attributes(request, True, None)
        return host_params, {"ssl_context": self.context, "cert_reqs": "CERT_REQUIRED"}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


def tls_session(context: ssl.SSLContext, session: requests.Session | None = None) -> requests.Session:
    """A requests session whose https:// connections use ``context``."""
    session = session or requests.Session()
    session.mount("https://", TlsAdapter(context))
    return session


class HttpClients:
    """httpx clients by TLS setting: the default one for channels without ``tls``, one per distinct setting."""

    def __init__(self, contexts: ClientContexts | None, make: Callable[[ssl.SSLContext | None], httpx.Client]) -> None:
        self.contexts = contexts
        self.make = make
        self.default = make(None)
        self._by_tls: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def get(self, tls: ClientTls | None) -> httpx.Client:
        if tls is None or self.contexts is None:
            return self.default
        key = self.contexts.key(tls)
        with self._lock:
            client = self._by_tls.get(key)
            if client is None:
                client = self._by_tls[key] = self.make(self.contexts.get(tls))
            return client

    def close(self) -> None:
        self.default.close()
        for client in self._by_tls.values():
            client.close()
