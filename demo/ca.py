"""A demo certificate authority for the bundled configuration and the tests.

It drives the ``openssl`` command with the GOST engine, as an operator would by hand,
and keeps an ``openssl ca`` database so that it can also issue certificates with
chosen validity dates and revoke them: the tests need real expired, not-yet-valid and
revoked certificates, not mocked clocks. Never use these keys outside a demo.
"""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

from signing.keys import Certificate, PrivateKey
from signing.xmldsig import Signer
from zdravlink.errors import ConfigurationError

CA_SUBJECT = "/O=Zdravlink demo/CN=Zdravlink Demo CA"
KEY_TYPES = ("gost2012-256", "gost2012-512", "rsa")
_GENPKEY = {
    "gost2012-256": ["-engine", "gost", "-algorithm", "gost2012_256", "-pkeyopt", "paramset:A"],
    "gost2012-512": ["-engine", "gost", "-algorithm", "gost2012_512", "-pkeyopt", "paramset:A"],
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
}
_CONFIG = """\
[ ca ]
default_ca = demo
[ demo ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = {md}
default_days = 730
default_crl_days = 3650
policy = policy_any
unique_subject = no
preserve = yes
x509_extensions = leaf
[ policy_any ]
organizationName = optional
commonName = supplied
[ leaf ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ req ]
distinguished_name = dn
string_mask = utf8only
[ dn ]
"""


class DemoCAError(ConfigurationError):
    pass


def _openssl(*args: str, cwd: Path | None = None) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise DemoCAError("the openssl command is missing (Debian package openssl)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoCAError(f"openssl {args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _asn1(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ")


class DemoCA:
    """A GOST R 34.10-2012 (256) CA in ``directory``; its certificate is the trust anchor."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.config = self.dir / "openssl.cnf"
        self.key = self.dir / "ca.key"
        self.cert = self.dir / "ca.pem"

    @classmethod
    def create(cls, directory: Path, days: int = 3650, *, key_type: str = "gost2012-256",
               subject: str = CA_SUBJECT) -> DemoCA:
        """A new CA (kept if ``directory`` has one); ``key_type`` rsa makes one like the Russian Trusted Root CA."""
        ca = cls(directory)
        if ca.cert.exists():
            return ca
        (ca.dir / "issued").mkdir(parents=True, exist_ok=True)
        (ca.dir / "index.txt").write_text("")
        (ca.dir / "serial").write_text("1000\n")
        (ca.dir / "crlnumber").write_text("1000\n")
        md = "sha256" if key_type == "rsa" else "md_gost12_256"
        ca.config.write_text(_CONFIG.format(dir=ca.dir, md=md))
        _openssl("genpkey", *_GENPKEY[key_type], "-out", str(ca.key))
        _openssl("req", "-config", str(ca.config), "-engine", "gost", "-x509", "-new", "-key", str(ca.key),
                 f"-{md}", "-utf8", "-subj", subject, "-days", str(days),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca.cert))
        return ca

    def issue(self, out_dir: Path, name: str, key_type: str, *, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None, days: int = 730, tls: str | None = None,
              hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[Path, Path]:
        """A key and a certificate for ``name`` (CN), written as ``<name>-<key_type>.key/.pem``.

        ``tls`` "server" or "client" makes a TLS certificate (extended key usage; a server's names
        ``hosts`` in subjectAltName, as hostname verification wants).
        """
        if key_type not in _GENPKEY:
            raise DemoCAError(f"unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})")
        out_dir.mkdir(parents=True, exist_ok=True)
        key, cert = out_dir / f"{name}-{key_type}.key", out_dir / f"{name}-{key_type}.pem"
        csr = out_dir / f".{name}-{key_type}.csr"
        _openssl("genpkey", *_GENPKEY[key_type], "-out", str(key))
        _openssl("req", "-config", str(self.config), "-engine", "gost", "-new", "-key", str(key), "-utf8",
                 "-subj", f"/O=Zdravlink demo/CN={name}", "-out", str(csr))
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        end = not_after or start + dt.timedelta(days=days)
        extra: list[str] = []
        if tls is not None:
            ext = out_dir / f".{name}-{key_type}.ext"
            ext.write_text(_tls_extensions(tls, hosts))
            extra = ["-extfile", str(ext), "-extensions", "tls"]
        _openssl("ca", "-config", str(self.config), "-engine", "gost", "-batch", "-utf8", "-notext",
                 "-startdate", _asn1(start), "-enddate", _asn1(end), "-in", str(csr), "-out", str(cert), *extra)
        csr.unlink()
        if tls is not None:
            ext.unlink()
        key.chmod(0o600)
        return key, cert

    def revoke(self, cert: Path) -> None:
        _openssl("ca", "-config", str(self.config), "-engine", "gost", "-revoke", str(cert))

    def write_crl(self, path: Path) -> Path:
        _openssl("ca", "-config", str(self.config), "-engine", "gost", "-gencrl", "-out", str(path))
        return path


def _tls_extensions(purpose: str, hosts: tuple[str, ...]) -> str:
    if purpose not in ("server", "client"):
        raise DemoCAError(f"tls must be server or client, not {purpose!r}")
    lines = ["[ tls ]", "basicConstraints = CA:FALSE", "subjectKeyIdentifier = hash",
             "authorityKeyIdentifier = keyid",
             "keyUsage = critical, digitalSignature, keyEncipherment, keyAgreement",
             f"extendedKeyUsage = {'serverAuth' if purpose == 'server' else 'clientAuth'}"]
    if purpose == "server":
        names = [f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts]
        lines.append("subjectAltName = " + ", ".join(names))
    return "\n".join(lines) + "\n"


def demo_signer(directory: Path, name: str, key_type: str = "gost2012-256") -> Signer:
    """The Signer for ``<directory>/<name>-<key_type>.key|.pem``, the layout ``create_demo_keys`` writes."""
    stem = directory / f"{name}-{key_type}"
    return Signer.create(PrivateKey.load(f"{stem}.key"), Certificate.load(f"{stem}.pem"))


def create_demo_keys(out: Path, names: list[str], key_types: tuple[str, ...] = ("gost2012-256", "rsa")) -> DemoCA:
    """The CA, ``trust/`` (CA certificate and CRL) and a key and certificate per name and key type.

    Existing files are kept, so running it again only fills in what is missing.
    """
    ca = DemoCA.create(out / "ca")
    trust = out / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca.cert, trust / "zdravlink-demo-ca.pem")
    for name in names:
        for key_type in key_types:
            if not (out / f"{name}-{key_type}.pem").exists():
                ca.issue(out, name, key_type)
    ca.write_crl(trust / "zdravlink-demo-ca.crl")
    return ca
