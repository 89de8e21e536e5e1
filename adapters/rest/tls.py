"""The API listener over TLS: uvicorn serves the gateway's SSL context and hands each request the client's certificate.

uvicorn does not put the peer's certificate in the ASGI scope. This HTTP protocol does,
once per connection, as the ASGI TLS extension's ``client_cert_chain`` (PEM) and, for the
gateway, as a ``gateway.tls.PeerCertificate`` that carries the listener's client CA store
(``PEER``). The SOAP endpoint reads the same through a2wsgi's ``environ["asgi.scope"]``.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.tls import PeerCertificate, ServerContext

#: The key, in ``scope["extensions"]["tls"]``, of the gateway's PeerCertificate (None: no certificate presented).
PEER = "zdravlink.peer"
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _tls_extension(ssl_object: ssl.SSLObject, server: ServerContext) -> dict[str, Any]:
    der = ssl_object.getpeercert(binary_form=True)
    return {"server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None, "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""), "cipher_suite": None,
            "zdravlink.cipher": (ssl_object.cipher() or ("",))[0],
            PEER: PeerCertificate(der, server.client_trust) if der else None}


def protocol_class(server: ServerContext) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol (as on a plain listener), adding the TLS extension to every request's scope."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class TlsHttpProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None:
                return
            extension = _tls_extension(ssl_object, server)
            app: ASGIApp = self.app

            async def with_tls(scope: Scope, receive: Receive, send: Send) -> None:
                scope.setdefault("extensions", {})["tls"] = extension
                await app(scope, receive, send)

            self.app = with_tls

    return TlsHttpProtocol


def uvicorn_options(server: ServerContext | None) -> dict[str, Any]:
    """What ``uvicorn.Config`` takes to serve ``server``'s context (nothing for a plain listener)."""
    if server is None:
        return {}
    return {"ssl_context_factory": lambda _config, _default: server.context, "http": protocol_class(server)}


def peer_of_scope(scope: Scope | None) -> PeerCertificate | None:
    if not scope:
        return None
    tls = (scope.get("extensions") or {}).get("tls") or {}
    peer = tls.get(PEER)
    return peer if isinstance(peer, PeerCertificate) else None


def peer_of(request: Request) -> PeerCertificate | None:
    """The client certificate presented on this request's connection, if any."""
    return peer_of_scope(request.scope)
