"""A time stamping authority (RFC 3161) for the demo and the tests: a real HTTP server on 127.0.0.1.

It answers ``application/timestamp-query`` with ``application/timestamp-reply`` made by
the ``openssl ts -reply`` command, an implementation independent of the gateway's own
request writer and token checker (``signing.timestamps``). Its certificate is issued by
the demo CA with the extended key usage ``timeStamping`` that RFC 3161 requires, so a
gateway whose TSA trust store is the demo ``trust/`` directory accepts its tokens.

    python -m demo.emulators.tsa --keys config/keys --port 8790     # until SIGTERM
"""
from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from demo.ca import DemoCA, DemoCAError, create_demo_keys
from demo.emulators.serving import ServedInThread, ThreadingHttpServer

log = logging.getLogger("zdravlink.emulator")

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
POLICY = "1.2.643.100.111.1"  # an OID under the demo's own arc: nothing relies on it
_EXTENSIONS = """\
[ tsa_cert ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_TS_CONFIG = """\
[ tsa ]
default_tsa = demo
[ demo ]
serial = {dir}/serial
crypto_device = builtin
signer_cert = {dir}/tsa.pem
certs = {dir}/tsa.pem
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = {policy}
other_policies = {policy}
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def tsa_files(keys: Path) -> Path:
    """The TSA's key, certificate (demo CA, EKU timeStamping) and ``openssl ts`` configuration under ``keys/tsa``.

    The CA and ``trust/`` are the demo's (``create_demo_keys``); made once, kept after.
    """
    create_demo_keys(keys, [])
    home = keys / "tsa"
    if (home / "tsa.cnf").exists():
        return home
    home.mkdir(parents=True, exist_ok=True)
    ca = DemoCA.create(keys / "ca")
    exe = shutil.which("openssl")
    if exe is None:
        raise DemoCAError("the openssl command is missing (Debian package openssl)")
    ext = home / "extensions.cnf"
    ext.write_text(_EXTENSIONS)

    def run(*args: str) -> None:
        done = subprocess.run([exe, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise DemoCAError(f"openssl {args[0]}: {done.stderr.strip()}")

    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(home / "tsa.key"))
    run("req", "-config", str(ca.config), "-new", "-key", str(home / "tsa.key"), "-utf8",
        "-subj", "/O=Zdravlink demo/CN=Zdravlink Demo TSA", "-out", str(home / "tsa.csr"))
    run("ca", "-config", str(ca.config), "-engine", "gost", "-batch", "-utf8", "-notext", "-days", "3650",
        "-extfile", str(ext), "-extensions", "tsa_cert", "-in", str(home / "tsa.csr"), "-out", str(home / "tsa.pem"))
    (home / "serial").write_text("01\n")
    (home / "tsa.cnf").write_text(_TS_CONFIG.format(dir=home, policy=POLICY))
    return home


class TsaServer(ServedInThread):
    """``POST /`` (any path) with a TimeStampReq; a TimeStampResp back, or 400/415 for what is not one."""

    name = "tsa"

    def __init__(self, keys: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.home = tsa_files(keys)
        self.requests = 0
        self._openssl = threading.Lock()  # openssl ts keeps a serial file: one reply at a time
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Type", "").split(";")[0].strip() != QUERY_TYPE:
                    self._answer(415, b"expected " + QUERY_TYPE.encode(), "text/plain")
                    return
                reply = server.reply(body)
                if reply is None:
                    self._answer(400, b"not a timestamp request", "text/plain")
                else:
                    self._answer(200, reply, REPLY_TYPE)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHttpServer((host, port), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tsa"

    @property
    def certificate(self) -> Path:
        return self.home / "tsa.pem"

    def reply(self, query: bytes) -> bytes | None:
        """``openssl ts -reply`` on the query; None when openssl cannot read it."""
        with self._openssl, tempfile.TemporaryDirectory(prefix="zl-tsa-") as tmp:
            q, r = Path(tmp) / "query.tsq", Path(tmp) / "reply.tsr"
            q.write_bytes(query)
            done = subprocess.run(["openssl", "ts", "-reply", "-config", str(self.home / "tsa.cnf"),
                                   "-queryfile", str(q), "-out", str(r)], capture_output=True, text=True)
            if done.returncode != 0 or not r.exists():
                log.warning("TSA: openssl ts -reply refused a query: %s", done.stderr.strip()[-300:])
                return None
            self.requests += 1
            return r.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description="The demo TSA (RFC 3161 over HTTP) until SIGTERM.")
    parser.add_argument("--keys", type=Path, required=True, help="the demo keys directory (CA, trust/)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    server = TsaServer(args.keys, args.host, args.port).start()
    log.info("TSA on %s", server.url)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
