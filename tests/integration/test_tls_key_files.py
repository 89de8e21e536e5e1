"""A listener's key and certificate from PKCS#12, its password from the environment: a real handshake on 127.0.0.1.

Operators get their TLS certificate from a CA as a .p12/.pfx more often than as PEM files.
The password is never in gateway.yaml: ``password_env`` names the variable. Each way of
getting it wrong stops start-up with the file or the variable named, not a bare SSL error.
"""
from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from demo.ca import DemoCA
from gateway.tls import ServerTls, TlsConfigError, server_context

PASSWORD = "пароль-p12 с пробелом"


@pytest.fixture(scope="module")
def p12(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A server certificate from an RSA demo CA exported as PKCS#12 with a password; (the .p12, the CA)."""
    out = tmp_path_factory.mktemp("p12")
    ca = DemoCA.create(out / "ca", key_type="rsa", subject="/O=Zdravlink demo/CN=P12 Test CA")
    ca.issue(out, "gateway-api", "rsa", tls="server")
    path = out / "gateway-api.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-inkey", str(out / "gateway-api-rsa.key"),
                    "-in", str(out / "gateway-api-rsa.pem"), "-out", str(path), "-passout", "env:P12_PASS"],
                   check=True, capture_output=True, env={"P12_PASS": PASSWORD, "PATH": "/usr/bin:/bin"})
    return path, ca.cert


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str, str, dict]:
    """One TLS handshake over a real TCP connection on 127.0.0.1; (version, cipher, the server's certificate)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    failures: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(2) == b"ok"
            return tls.version() or "", tls.cipher()[0], tls.getpeercert()
    finally:
        thread.join(10)
        listener.close()
        assert not failures, failures


def test_a_pkcs12_listener_with_the_password_from_the_environment_serves_tls(p12, monkeypatch):
    path, ca = p12
    monkeypatch.setenv("ZL_TEST_TLS_P12", PASSWORD)
    server = server_context(ServerTls(pkcs12=str(path), password_env="ZL_TEST_TLS_P12"), path.parent)
    assert server.certificates[0].subject == "CN=gateway-api,O=Zdravlink demo"
    client = ssl.create_default_context(cafile=str(ca))
    version, _cipher, cert = handshake(server.context, client)
    assert version == "TLSv1.3"
    assert ("commonName", "gateway-api") in [pair for rdn in cert["subject"] for pair in rdn]
    # TLS 1.2 with the suites the gateway allows (forward secrecy, AEAD) works too
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher, _ = handshake(server.context, client)
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-RSA-") and ("GCM" in cipher or "CHACHA" in cipher)


def test_min_version_1_3_refuses_a_tls_1_2_client(p12, monkeypatch):
    path, ca = p12
    monkeypatch.setenv("ZL_TEST_TLS_P12", PASSWORD)
    server = server_context(ServerTls(pkcs12=str(path), password_env="ZL_TEST_TLS_P12", min_version="1.3"),
                            path.parent)
    client = ssl.create_default_context(cafile=str(ca))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, AssertionError), match="(?i)protocol version|unsupported protocol"):
        handshake(server.context, client)
    client.maximum_version = ssl.TLSVersion.TLSv1_3
    assert handshake(server.context, client)[0] == "TLSv1.3"


def test_pkcs12_without_its_variable_or_with_a_wrong_password_names_the_problem(p12, monkeypatch):
    path, _ = p12
    monkeypatch.delenv("ZL_TEST_TLS_P12", raising=False)
    with pytest.raises(TlsConfigError, match="environment variable ZL_TEST_TLS_P12 is not set"):
        server_context(ServerTls(pkcs12=str(path), password_env="ZL_TEST_TLS_P12"), path.parent)
    monkeypatch.setenv("ZL_TEST_TLS_P12", "not the password")
    with pytest.raises(TlsConfigError, match=str(path.name)):
        server_context(ServerTls(pkcs12=str(path), password_env="ZL_TEST_TLS_P12"), path.parent)


def test_a_password_is_never_taken_from_the_file():
    with pytest.raises(ValueError, match="password"):
        ServerTls.model_validate({"pkcs12": "x.p12", "password": "in-the-file"})


# ---- client certificates: judged by the gateway after the handshake, or (the fallback) inside it

@pytest.fixture(scope="module")
def clients(p12, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, ca_cert = p12
    out = tmp_path_factory.mktemp("clients")
    ca = DemoCA(path.parent / "ca")
    ca.issue(out, "lab", "rsa", tls="client")
    DemoCA.create(out / "rogue", key_type="rsa", subject="/O=Nobody/CN=Rogue CA").issue(out, "rogue", "rsa",
                                                                                      tls="client")
    (out / "store").mkdir()
    (out / "store" / "ca.pem").write_bytes(ca_cert.read_bytes())
    return out


def client_with(ca: Path, keys: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(keys / f"{name}-rsa.pem", keys / f"{name}-rsa.key")
    return ctx


def test_an_untrusted_client_certificate_passes_the_handshake_for_the_gateway_to_refuse_and_audit(
        p12, clients, monkeypatch):
    path, ca = p12
    monkeypatch.setenv("ZL_TEST_TLS_P12", PASSWORD)
    monkeypatch.delenv("ZL_TLS_VERIFY_IN_HANDSHAKE", raising=False)
    server = server_context(ServerTls(pkcs12=str(path), password_env="ZL_TEST_TLS_P12",
                                      client_ca=str(clients / "store")), path.parent)
    assert server.audited
    assert handshake(server.context, client_with(ca, clients, "rogue"))[0] == "TLSv1.3"


def test_the_fallback_refuses_an_untrusted_client_certificate_inside_the_handshake(p12, clients, monkeypatch):
    path, ca = p12
    monkeypatch.setenv("ZL_TEST_TLS_P12", PASSWORD)
    monkeypatch.setenv("ZL_TLS_VERIFY_IN_HANDSHAKE", "1")
    server = server_context(ServerTls(pkcs12=str(path), password_env="ZL_TEST_TLS_P12",
                                      client_ca=str(clients / "store")), path.parent)
    assert not server.audited
    assert handshake(server.context, client_with(ca, clients, "lab"))[0] == "TLSv1.3"
    with pytest.raises((ssl.SSLError, AssertionError, ConnectionError), match="(?i)certificate|reset|alert"):
        handshake(server.context, client_with(ca, clients, "rogue"))


def test_a_pkcs12_with_its_ca_chain_sends_the_chain_in_the_handshake(tmp_path, monkeypatch):
    """CAs issue server certificates from an intermediate CA and ship the .p12 with it: a partner that trusts
    only the root must get the intermediate from the handshake."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    (tmp_path / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    (tmp_path / "leaf.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                                       "subjectAltName=DNS:localhost\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.pem", "-days", "30",
            "-subj", "/CN=Test Root CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, issuer, subject, ext in (("sub", "root", "/CN=Test Sub CA", "ca.ext"),
                                       ("leaf", "sub", "/CN=gateway-api", "leaf.ext")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
                "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", f"{name}.pem")
    openssl("pkcs12", "-export", "-inkey", "leaf.key", "-in", "leaf.pem", "-certfile", "sub.pem",
            "-out", "chain.p12", "-passout", "pass:p12-secret")
    monkeypatch.setenv("ZL_TEST_TLS_P12", "p12-secret")
    server = server_context(ServerTls(pkcs12="chain.p12", password_env="ZL_TEST_TLS_P12"), tmp_path)
    assert server.certificates[0].subject == "CN=gateway-api"
    client = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))  # the root only
    version, _, cert = handshake(server.context, client)
    assert version == "TLSv1.3" and ("commonName", "gateway-api") in [p for rdn in cert["subject"] for p in rdn]
