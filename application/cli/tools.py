"""Tools for integrators: check a configuration, map a lab message, sign, verify and transform XML, hash a token."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from application.cli.common import (
    ConfigOpt,
    app,
    err,
    keyring_or_exit,
    load_or_exit,
    mappings_or_exit,
    or_exit,
    out,
    tariffs_or_exit,
)
from application.runtime import config_dir
from gateway.config import GatewayConfig, hash_token
from gateway.keyring import KeyRing


@app.command("check-config")
def check_config(directory: Path | None = typer.Argument(None, help="Configuration directory")) -> None:
    """Validate participants, routes, settings, lab mappings, keys and certificates without starting anything."""
    cfg = load_or_exit(directory)
    ring = keyring_or_exit(cfg)
    labs = mappings_or_exit(cfg)
    tariffs = tariffs_or_exit(cfg)
    from adapters.console.operators import load_operators

    or_exit(load_operators, cfg.directory)
    out.print(f"[green]OK[/green] {config_dir(directory)}: {len(cfg.participants)} participants, "
              f"{len(cfg.routes)} routes, {len(labs)} lab mappings, {len(tariffs)} tariffs")
    for owner, cert in ring.owned_certificates():
        days = cert.days_left()
        colour = "red" if days < 0 else "yellow" if days < 30 else "green"
        out.print(f"  {owner:<14} [{colour}]{days:7.0f} days[/{colour}]  {cert.describe()}", highlight=False)
    _transport_report(cfg, ring)


def _transport_report(cfg: GatewayConfig, ring: KeyRing) -> None:
    """Listeners' transport, every TLS certificate and CRL date, and a warning for each within 30 days."""
    import datetime as dt

    from gateway.credentials import Authenticator
    from gateway.tls import transport_label
    from gateway.transport import WARN_WITHIN, expiring, watched

    s = cfg.settings
    out.print(f"  listeners: API {s.api.host}:{s.api.port} [{transport_label(s.api.tls, s.api.plain)}]"
              + (f", MLLP {s.hl7.host}:{s.hl7.port} [{transport_label(s.hl7.tls, s.hl7.plain)}]"
                 if s.hl7.enabled else ""), highlight=False, markup=False)  # "[plain (…)]" is no markup
    dates = watched(cfg, ring.owned_certificates(), ring.trust)
    signing = {"signing", "participant-signing", "trust-store"}
    for w in dates:
        if w.kind in signing:
            continue  # listed above
        days = w.seconds_left() / 86400
        colour = "red" if days < 0 else "yellow" if days < 30 else "green"
        what = "next update" if w.kind == "crl" else f"serial {w.serial}"
        out.print(f"  {w.owner:<14} [{colour}]{days:7.0f} days[/{colour}]  {w.kind}: {w.subject} ({what})",
                  highlight=False)
    for w in expiring(dates):
        days = w.seconds_left() / 86400
        when = "expired" if days < 0 else f"expires in {days:.0f} days"
        if w.kind == "crl":
            when = "is past its next update" if days < 0 else f"is due for its next update in {days:.0f} days"
        err.print(f"[yellow]warning[/yellow]: {w.owner} {w.kind} {w.subject!r} {when}", highlight=False)
    for who, token in Authenticator(cfg.participants, cfg.directory).expiring_tokens(WARN_WITHIN):
        left = (token.expires - dt.datetime.now(dt.UTC)).total_seconds() / 86400 if token.expires else 0
        name = f" {token.label!r}" if token.label else ""
        state = "expired" if left < 0 else f"expires in {left:.0f} days"
        err.print(f"[yellow]warning[/yellow]: {who}'s API token{name} {state}", highlight=False)


@app.command("map")
def map_cmd(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="An HL7 v2 message (CR or LF segments)"),
            lab: str = typer.Option(..., "--lab", help="The lab whose mapping file to use"),
            config: Path | None = ConfigOpt) -> None:
    """Print the lab result a message becomes under its lab's mapping, or its gaps; sends nothing."""
    from lxml import etree

    from adapters.hl7v2.lab_intake import parse_for_cli
    from adapters.hl7v2.oru import MappingGaps, map_message
    from gateway import schemas

    cfg = load_or_exit(config)
    labs = mappings_or_exit(cfg)
    if lab not in labs:
        err.print(f"no mapping file for {lab!r} in {cfg.directory / 'mappings'} (have: {', '.join(sorted(labs))})")
        raise typer.Exit(2)
    try:
        mapped = map_message(parse_for_cli(file.read_bytes()), labs[lab])
    except MappingGaps as exc:
        for g in exc.gaps + exc.warnings:
            err.print(f"{g.where}: {g.code}: {g.reason}" + (" (warning)" if g.severity == "W" else ""), highlight=False)
        raise typer.Exit(1) from None
    except Exception as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    try:
        schemas.validate_payload("urn://zdravlink/types/lab-result/1.0", mapped.payload)
    except Exception as exc:
        err.print(f"the result does not pass its schema: {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"<!-- {lab} → {mapped.recipient}, MessageID {mapped.message_id} (from MSH-10 {mapped.control_id}) -->",
              highlight=False)
    for w in mapped.warnings:
        err.print(f"{w.where}: {w.code}: {w.reason} (warning: the result carries it)", highlight=False)
    sys.stdout.write(etree.tostring(mapped.payload, pretty_print=True, encoding="unicode"))


@app.command()
def transform(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="XML file")) -> None:
    """Write the SMEV transform (urn://smev-gov-ru/xmldsig/transform) of FILE's root element to stdout."""
    from gateway.errors import Rejection
    from gateway.xmlsafe import parse_xml
    from signing.smev_transform import TransformError
    from signing.smev_transform import transform as smev_transform

    try:
        sys.stdout.buffer.write(smev_transform(parse_xml(file.read_bytes())))
    except (Rejection, TransformError) as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None


def _signer(key: Path | None, cert: Path | None, password_env: str | None, alg: str | None,
            config: Path | None):
    import os

    from signing import Certificate, KeyFileError, PrivateKey, Signer

    if key is None:
        ring = keyring_or_exit(load_or_exit(config))
        if ring.signer is None:
            err.print("no --key given and the configuration has no signing key")
            raise typer.Exit(2)
        if alg is None or alg == ring.signer.algorithm.name:
            return ring.signer
        return Signer.create(ring.signer.key, ring.signer.certificate, alg)
    password = os.environ.get(password_env) if password_env else None
    try:
        return Signer.create(PrivateKey.load(key, password), Certificate.load(cert or key, password), alg)
    except (KeyFileError, ValueError) as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(2) from None


@app.command("sign")
def sign_cmd(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="XML file"),
             ref_id: str = typer.Option(..., "--id", help="Id of the element to sign"),
             alg: str | None = typer.Option(None, "--alg", help="gost2012-256 | gost2012-512 | rsa-sha256 "
                                                                   "(default: from the key)"),
             key: Path | None = typer.Option(None, help="Private key (PEM, DER or .p12); default: the gateway's"),
             cert: Path | None = typer.Option(None, help="Certificate (PEM or DER; not needed with a .p12 key)"),
             password_env: str | None = typer.Option(None, help="Environment variable holding the key's password"),
             smev: bool = typer.Option(True, "--smev/--no-smev", help="Apply the SMEV transform to the reference"),
             output: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of stdout"),
             config: Path | None = ConfigOpt) -> None:
    """Add a detached XML-DSig over the element with Id ID and write the signed document.

    In a zl:Envelope the signature goes into SenderSignature; elsewhere it is placed right
    after the signed element, as SMEV places CallerInformationSystemSignature.
    """
    from lxml import etree

    from gateway.errors import Rejection
    from gateway.keyring import place_signature
    from gateway.xmlsafe import parse_xml
    from signing import ALGORITHMS, sign

    if alg is not None and alg not in ALGORITHMS:
        err.print(f"--alg must be one of {', '.join(ALGORITHMS)}")
        raise typer.Exit(2)
    try:
        root = parse_xml(file.read_bytes())
    except Rejection as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    targets = root.xpath("//*[@Id=$v or @ID=$v or @id=$v]", v=ref_id)
    if len(targets) != 1:
        err.print(f"{file}: {len(targets)} elements carry Id {ref_id!r}; exactly one is needed")
        raise typer.Exit(1)
    signer = _signer(key, cert, password_env, alg, config)
    try:
        place_signature(targets[0], sign(targets[0], signer, smev=smev))
    except ValueError as exc:
        err.print(f"{file}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    data = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
    if output:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


@app.command("verify")
def verify_cmd(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="XML file"),
               trust: Path | None = typer.Option(None, help="Trust store directory (default: the configuration's)"),
               cert: list[Path] | None = typer.Option(None, help="Accept only these signer certificates"),
               explain_: bool = typer.Option(False, "--explain", help="Lay out every step and name the cause: "
                                             "references, transforms, digests, SignatureValue, chain and CRL"),
               dump: bool = typer.Option(False, "--dump", help="With --explain: the exact octets after exc-c14n "
                                         "and the SMEV transform, and the canonical SignedInfo"),
               config: Path | None = ConfigOpt) -> None:
    """Verify every ds:Signature in FILE; exit 1 if any is refused, printing its code.

    With the configuration, a zl:Envelope's SenderSignature must be by the Sender's
    certificate and its GatewaySignature by the gateway's. ``--explain`` is the signature
    doctor: for each signature, each reference with its transforms, the digest declared
    and computed (``--dump``: the octets), the SignatureValue check, the certificate chain
    with the CRL, and the cause in one line (wrong transform, content changed, wrong key,
    untrusted certificate).
    """
    from gateway.errors import Rejection
    from gateway.keyring import expected_signers
    from gateway.xmlsafe import parse_xml
    from signing import Certificate, KeyFileError, SignatureError, TrustStore, verify
    from signing.xmldsig import DS_NS

    ring = None
    try:
        root = parse_xml(file.read_bytes())
        if trust is None:
            ring = keyring_or_exit(load_or_exit(config))
            if ring.trust is None:
                err.print("the configuration has no signing.trust_store; give --trust DIR")
                raise typer.Exit(2)
            store = ring.trust
        else:
            store = TrustStore.from_directory(trust)
        pinned = [Certificate.load(c) for c in cert or []]
    except (Rejection, KeyFileError) as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(2) from None
    signatures = root.iter(f"{{{DS_NS}}}Signature")
    failed = found = 0
    known = [c for certs in ring.certificates.values() for c in certs] + (
        [ring.signer.certificate] if ring and ring.signer else []) if ring else list(pinned)
    for sig in signatures:
        found += 1
        expected, signers = expected_signers(sig, ring)
        if explain_:
            from signing.explain import explain

            report = explain(sig, document=root, trust=store, expected=expected, signers=pinned or signers,
                             known=known, index=found)
            failed += report.code is not None
            colour = "green" if report.code is None else "red"
            out.print(f"[{colour}]{report.lines(dump=dump)[0]}[/{colour}]", highlight=False)
            sys.stdout.flush()
            for line in report.lines(dump=dump)[1:]:
                out.print(line, highlight=False, markup=False)
            continue
        try:
            v = verify(sig, document=root, trust=store, expected=expected, signers=pinned or signers)
            out.print(f"[green]OK[/green] {', '.join(v.references)} {v.algorithm.name} by {v.certificate.describe()}",
                      highlight=False)
        except SignatureError as exc:
            failed += 1
            out.print(f"[red]{exc.code}[/red] {exc.detail}", highlight=False)
    if not found:
        out.print("[red]no ds:Signature found[/red]")
    if failed or not found:
        raise typer.Exit(1)


@app.command("hash-token", context_settings={"ignore_unknown_options": True})
def hash_token_cmd(argument: list[str] | None = typer.Argument(None, hidden=True)) -> None:
    """Print the sha256 of an API token read from stdin, for credentials.api_tokens in participants.yaml.

    The token is never taken from the command line: shell history and the process list
    would keep it. Pipe it in (``printf %s "$TOKEN" | zdravlink hash-token``) or type it
    at the prompt. One trailing newline is dropped; nothing else is.
    """
    if argument:
        err.print("the token is read from stdin, never from the command line (shell history and ps keep it): "
                  "printf %s \"$TOKEN\" | zdravlink hash-token")
        raise typer.Exit(2)
    if sys.stdin.isatty():
        import getpass

        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.read()
        token = token[:-1] if token.endswith("\n") else token
        token = token[:-1] if token.endswith("\r") else token
    if not token:
        err.print("no token on stdin")
        raise typer.Exit(2)
    out.print(hash_token(token))
