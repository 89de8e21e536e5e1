"""The demo commands (a ``zdravlink.cli`` plugin): demo keys, partner emulators, the demo gateway, sample traffic."""
from __future__ import annotations

import datetime as dt
import uuid
from datetime import datetime
from pathlib import Path

import typer

from application.cli.common import ConfigOpt, err, keyring_or_exit, load_or_exit, out, tariffs_or_exit
from application.runtime import setup_logging

app = typer.Typer(help="Demo partners, keys and sample traffic.", no_args_is_help=True)
DEMO_FRMR_TOKEN = "demo-frmr-token"  # the demo ФРМР emulator's bearer token; never a real one


@app.command("run")
def demo_run(config: Path | None = ConfigOpt) -> None:
    """The gateway on a configuration with demo partners: demo keys made where missing, every partner emulator
    started beside the gateway's processes, and what to try printed once the gateway is ready."""
    import os
    import sys

    from application.cli.running import print_endpoints
    from application.runtime import config_dir
    from application.supervisor import Supervisor
    from demo.ca import KEY_TYPES, DemoCAError, create_demo_keys

    setup_logging("supervisor")
    os.environ.setdefault("ZL_FRMR_TOKEN", DEMO_FRMR_TOKEN)  # the demo ФРМР's token, for every child process
    directory = config_dir(config)
    cfg = load_or_exit(config)
    try:
        create_demo_keys(cfg.directory / "keys", ["gateway", *sorted(cfg.participants)], KEY_TYPES)
    except DemoCAError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from None
    keyring_or_exit(cfg)
    print_endpoints(cfg, directory)
    for p in cfg.participants.values():
        if p.delivery.mode == "soap":
            out.print(f"  partner  {p.mnemonic:<14} receives by SOAP, WSDL {p.delivery.wsdl}")
        elif p.delivery.mode == "registry":
            out.print(f"  registry {p.mnemonic:<14} emulator answers at {p.delivery.url}")
        elif p.delivery.url:
            out.print(f"  partner  {p.mnemonic:<14} receives at {p.delivery.url}")

    def ready() -> None:
        out.print("[bold green]ready[/bold green]")
        out.print("  try      zdravlink demo send [--soap]   (a notice from lab-demo to clinic-mis, REST or SMEV)")
        out.print("           zdravlink demo send --hl7      (lab results as HL7 v2 over MLLP)")
        out.print("           zdravlink demo send --verify   (clinic-mis asks ФРМР and ФРМО; answers come back to it)")

    partners = [sys.executable, "-m", "application.cli", "demo", "partners", "--config", str(directory)]
    raise typer.Exit(Supervisor(cfg, directory, extra={"demo-partners": partners}, on_ready=ready).run())


@app.command("keys")
def keys_demo(config: Path | None = ConfigOpt,
              out_dir: Path | None = typer.Option(None, "--out",
                                                  help="Where to write (default: <config>/keys)")) -> None:
    """Create a demo CA and GOST 2012 (256, 512) and RSA keys for the gateway and every participant.

    Existing files are kept; never use these keys outside a demo.
    """
    from demo.ca import KEY_TYPES, DemoCAError, create_demo_keys

    cfg = load_or_exit(config)
    target = out_dir or cfg.directory / "keys"
    names = ["gateway", *sorted(cfg.participants)]
    try:
        create_demo_keys(target, names, KEY_TYPES)
    except DemoCAError as exc:
        err.print(str(exc), highlight=False)
        raise typer.Exit(1) from None
    out.print(f"demo CA, trust store and keys for {', '.join(names)} in {target}", highlight=False)


@app.command("partners")
def demo_partners(config: Path | None = ConfigOpt) -> None:
    """Run a demo server for every participant that receives by REST or SOAP push on 127.0.0.1 (insurers as
    insurer emulators) and for every registry channel there (ФРМР and ФРМО emulators)."""
    import signal
    import threading
    from urllib.parse import urlsplit

    from demo.emulators.rest_recipient import RecipientServer
    from demo.emulators.soap_partner import SoapPartner

    setup_logging("demo-partners")
    cfg = load_or_exit(config)
    ring = keyring_or_exit(cfg)
    gateway_cert = ring.signer.certificate if ring.signer else None
    ports: dict[int, tuple[str, str]] = {}
    channels = [(f"{r.recipient}/{ch.name}", ch) for r in cfg.routes for ch in r.channels]
    channels += [(p.mnemonic, p.delivery) for p in cfg.participants.values()]
    for name, ch in channels:
        where = urlsplit(ch.wsdl if ch.mode == "soap" else ch.url or "")
        if ch.mode in ("rest", "soap") and where.hostname == "127.0.0.1":
            ports.setdefault(where.port or 80, (name, ch.mode))
        elif ch.mode == "registry" and where.hostname == "127.0.0.1":
            ports.setdefault(where.port or 80, (name, ch.registry or ""))

    def server(port: int, name: str, mode: str):
        owner = cfg.participants.get(name.split("/")[0])
        if mode in ("frmr", "frmo"):
            return _demo_registry(cfg, owner.mnemonic if owner else mode, mode, port)
        if mode == "soap" and owner is not None and owner.kind == "insurer":
            return _demo_insurer(cfg, owner.mnemonic, port)
        if mode == "soap":
            return SoapPartner(port=port, name=name)
        return RecipientServer(port=port, name=name, trust=ring.trust, gateway=gateway_cert)

    servers = [server(port, name, mode).start() for port, (name, mode) in sorted(ports.items())]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    for s in servers:
        s.stop()


def _demo_registry(cfg, mnemonic: str, registry: str, port: int):
    """ФРМР or ФРМО on the bundled fictitious dataset, signing its answers with the registry's demo key."""
    import os

    from demo.ca import demo_signer
    from demo.emulators.registries import DEMO_DATASET, FrmoEmulator, FrmrEmulator, load_dataset

    signer = demo_signer(cfg.directory / "keys", mnemonic)
    dataset = load_dataset(DEMO_DATASET)
    if registry == "frmr":
        return FrmrEmulator(dataset, token=os.environ.get("ZL_FRMR_TOKEN", DEMO_FRMR_TOKEN), port=port,
                            signer=signer, name=f"{mnemonic}:{port}")
    return FrmoEmulator(dataset, port=port, signer=signer, name=f"{mnemonic}:{port}")


def _demo_insurer(cfg, mnemonic: str, port: int):
    """An insurer that runs the ФЛК of its region profile (oms/insurers.yaml) on each register and answers
    with a signed ФЛК protocol through the API; without a profile it answers act-protocols on the tariffs."""
    import os

    from adapters.acts.schedule import previous_period
    from demo.ca import demo_signer
    from demo.emulators.insurer import InsurerEmulator
    from gateway.oms.profiles import load_oms_config

    last_month = dt.date.fromisoformat(previous_period(dt.date.today()) + "-01")
    prices = tariffs_or_exit(cfg).prices_on(last_month)  # exits on any problem of oms/ too
    oms = load_oms_config(cfg, [])
    binding = oms.insurers.get(mnemonic)
    region = dict(answer="flk", profile=oms.profiles[binding.profile], editions=binding.editions) if binding else {}
    signer = demo_signer(cfg.directory / "keys", mnemonic)
    s = cfg.settings.api
    return InsurerEmulator(prices, mnemonic=mnemonic, port=port, signer=signer, gateway_url=f"http://{s.host}:{s.port}",
                           token=os.environ.get("ZL_DEMO_INSURER_TOKEN", "demo-insurer-token"), **region)


@app.command("send")
def demo_send(config: Path | None = ConfigOpt, count: int = typer.Option(1, help="How many notices"),
              token: str = typer.Option("demo-lab-token", help="Sender's API token"),
              signed: bool = typer.Option(True, "--sign/--no-sign", help="Sign as lab-demo with its demo key"),
              soap: bool = typer.Option(False, "--soap", help="Send as SMEV 3 SendRequest to /smev/1.1"),
              hl7v2: bool = typer.Option(False, "--hl7", help="Send lab results as HL7 v2 ORU^R01 over MLLP"),
              records: bool = typer.Option(False, "--records", help="Send clinic-mis's service records for last "
                                           "month to insurer-demo"),
              verify: bool = typer.Option(False, "--verify", help="Ask ФРМР about a doctor and ФРМО about an "
                                          "organisation, as clinic-mis")) -> None:
    """Send demo messages: notices from lab-demo to clinic-mis (REST, or SMEV with --soap), lab results (--hl7),
    service records (--records) or registry verification requests (--verify)."""
    if verify:
        _demo_verify(load_or_exit(config))
        return
    if hl7v2:
        _demo_hl7(load_or_exit(config), count)
        return
    if records:
        _demo_records(load_or_exit(config), count)
        return
    import httpx

    from adapters.soap import smev_client
    from demo.ca import demo_signer
    from gateway.envelope import Envelope
    from gateway.xmlsafe import parse_xml
    from signing import sign

    cfg = load_or_exit(config)
    base = f"http://{cfg.settings.api.host}:{cfg.settings.api.port}"
    keys = cfg.directory / "keys"
    signer = demo_signer(keys, "lab-demo") if signed else None
    for _ in range(count):
        payload = ('<n:Notice xmlns:n="urn://zdravlink/types/notice/1.0"><n:Code>SAMPLE_RECEIVED</n:Code>'
                   f'<n:IssuedAt>{datetime.now(dt.UTC).isoformat(timespec="seconds")}</n:IssuedAt>'
                   '<n:Text>Образец получен лабораторией</n:Text></n:Notice>')
        if soap:
            status, answer = smev_client.call(f"{base}/smev/1.1", smev_client.send_request(payload, by=signer),
                                              token=None if signed else token)
            out.print(f"{status} {smev_client.describe(answer)}", highlight=False)
            continue
        env = Envelope(message_id=str(uuid.uuid1()), sender="lab-demo", recipient="clinic-mis",
                       message_type="urn://zdravlink/types/notice/1.0", payload=parse_xml(payload.encode()))
        if signer is not None:
            env.sender_signature = sign(env.sender_data_element(), signer)
        r = httpx.post(f"{base}/api/v1/messages", json=env.to_json(), headers={"Authorization": f"Bearer {token}"})
        out.print(f"{r.status_code} {r.text}", highlight=False)


def _demo_verify(cfg) -> None:
    """A doctor (valid) and an organisation (licence revoked) from the demo dataset; answers go to clinic-mis."""
    import httpx

    base = f"http://{cfg.settings.api.host}:{cfg.settings.api.port}"
    worker = "urn://zdravlink/types/worker-verification/1.0"
    org = "urn://zdravlink/types/organisation-verification/1.0"
    asks = [("frmr", worker, f'<wv:WorkerVerificationRequest xmlns:wv="{worker}"><wv:SNILS>11223344595</wv:SNILS>'
                             '<wv:Specialty>Терапия</wv:Specialty></wv:WorkerVerificationRequest>'),
            ("frmo", org, f'<ov:OrganisationVerificationRequest xmlns:ov="{org}">'
                          '<ov:Oid>1.2.643.5.1.13.13.12.2.77.1003</ov:Oid></ov:OrganisationVerificationRequest>')]
    for registry, message_type, payload in asks:
        r = httpx.post(f"{base}/api/v1/messages", headers={"Authorization": "Bearer demo-mis-token"},
                       json={"messageId": str(uuid.uuid1()), "sender": "clinic-mis", "recipient": registry,
                             "messageType": message_type, "payload": payload})
        out.print(f"{registry}: {r.status_code} {r.text}", highlight=False)
    out.print("  the answers reach clinic-mis with ReferenceMessageID = each MessageID above "
              "(zdravlink trail MESSAGE_ID shows the exchange)", highlight=False)


def _demo_records(cfg, count: int) -> None:
    """Post clinic-mis's service records for last month; then `zdravlink acts build` sends the act."""
    import httpx

    from adapters.acts.schedule import previous_period

    period = previous_period(dt.date.today())
    base = f"http://{cfg.settings.api.host}:{cfg.settings.api.port}"
    prices = tariffs_or_exit(cfg).prices_on(dt.date.fromisoformat(period + "-01"))
    codes = sorted(prices)
    for i in range(count):
        code, day = codes[i % len(codes)], f"{period}-{1 + i % 28:02d}"
        record_id = f"DEMO-{uuid.uuid4().hex[:10]}"
        payload = ('<sr:ServiceRecord xmlns:sr="urn://zdravlink/types/service-record/1.0">'
                   f"<sr:RecordId>{record_id}</sr:RecordId><sr:Period>{period}</sr:Period>"
                   "<sr:Organisation><sr:Oid>1.2.643.5.1.13.13.12.2.77.7701</sr:Oid><sr:CodeMO>770001</sr:CodeMO>"
                   "</sr:Organisation><sr:Patient><sr:ENP>1234567890123452</sr:ENP><sr:PolicyType>3</sr:PolicyType>"
                   "<sr:Insurer>insurer-demo</sr:Insurer><sr:Person><sr:FamilyName>Демо</sr:FamilyName>"
                   "<sr:GivenName>Пациент</sr:GivenName><sr:Sex>1</sr:Sex><sr:BirthDate>1980-01-01</sr:BirthDate>"
                   "</sr:Person></sr:Patient><sr:Service>"
                   f"<sr:Code>{code}</sr:Code><sr:DateIn>{day}</sr:DateIn><sr:DateOut>{day}</sr:DateOut>"
                   f"<sr:Quantity>1</sr:Quantity><sr:Tariff>{prices[code]}</sr:Tariff><sr:Diagnosis>J06.9</sr:Diagnosis>"
                   "<sr:Department>1</sr:Department></sr:Service><sr:Doctor><sr:SNILS>11223344595</sr:SNILS>"
                   "<sr:Specialty>76</sr:Specialty></sr:Doctor></sr:ServiceRecord>")
        r = httpx.post(f"{base}/api/v1/messages", headers={"Authorization": "Bearer demo-mis-token"},
                       json={"messageId": str(uuid.uuid1()), "sender": "clinic-mis", "recipient": "insurer-demo",
                             "messageType": "urn://zdravlink/types/service-record/1.0", "payload": payload})
        out.print(f"{r.status_code} record {record_id}: {r.json().get('status') or r.json().get('code')}",
                  highlight=False)
    out.print(f"  then: zdravlink acts build --period {period}", highlight=False)


def _demo_hl7(cfg, count: int) -> None:
    """Send lab-demo's ORU^R01 results to the MLLP listener and print each ACK's MSA (and ERR) segments."""
    import socket

    from adapters.hl7v2.mllp import FrameReader, frame
    from adapters.hl7v2.oru import message_id_for

    now = datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    for i in range(count):
        control = f"DEMO-{uuid.uuid4().hex[:12]}"
        text = (f"MSH|^~\\&|LIS|LAB-DEMO|MIS|CLINIC|{now}||ORU^R01^ORU_R01|{control}|P|2.5.1||||||UNICODE UTF-8\r"
                "PID|1||11223344595^^^ПФР^SNILS~A-77^^^LAB^MR||Демо^Пациент||19800101|F\r"
                f"ORC|RE|ORD-{i + 1}\r"
                f"OBR|1|ORD-{i + 1}|LAB-{control}|CBC^Общий анализ крови|||{now}|||||||||||||||{now}||HM|F\r"
                "OBX|1|NM|HGB^Гемоглобин||13,5|g/dL|12,0-16,0|N|||F\r"
                "OBX|2|NM|GLU^Глюкоза||99|mg/dL|70-100|N|||F\r"
                "OBX|3|SN|CRP^СРБ||<^5|mg/L|0-5|N|||F\r").encode()
        with socket.create_connection((cfg.settings.hl7.host, cfg.settings.hl7.port), timeout=15) as sock:
            sock.sendall(frame(text))
            reader, acks = FrameReader(), []
            while not acks:
                data = sock.recv(4096)
                if not data:
                    break
                acks = reader.feed(data)
        for segment in (acks[0].decode("utf-8", "replace").split("\r") if acks else ["(no ACK)"]):
            if segment.startswith(("MSA", "ERR")) or segment == "(no ACK)":
                out.print(segment, highlight=False)
        out.print(f"  MessageID {message_id_for('lab-demo', control)}: zdravlink trail it", highlight=False)
