"""The gateway's ФРМР and ФРМО clients against the signing emulators on 127.0.0.1.

Answers, failures and their classification, and the registries' signatures.
"""
from __future__ import annotations

import datetime as dt
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from adapters.registries.clients import FrmoClient, FrmrClient, RegistryCallFailed, RegistryReply
from adapters.registries.verdicts import ORGANISATION_NS, WORKER_NS, organisation_answer, worker_answer
from adapters.tls_clients import HttpClients
from demo.ca import demo_signer as signer
from demo.emulators.registries import DEMO_DATASET, Dataset, FrmoEmulator, FrmrEmulator, load_dataset
from gateway.tls import ClientContexts, ClientTls, client_context
from signing import TrustStore
from tests.support.ports import free_port

DATASET = DEMO_DATASET
TOKEN = "frmr-token-not-a-secret"
TODAY = dt.date(2026, 11, 23)
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
KNOWN_SNILS, UNKNOWN_SNILS = "11223344595", "23456789100"
MO_VALID, MO_CLOSED = "1.2.643.5.1.13.13.12.2.77.1001", "1.2.643.5.1.13.13.12.2.77.1002"
MO_UNKNOWN = "1.2.643.5.1.13.13.12.2.77.9999"


@pytest.fixture(scope="module")
def keys(registry_keys: Path) -> Path:
    return registry_keys


@pytest.fixture(scope="module")
def trust(keys: Path) -> TrustStore:
    return TrustStore.from_directory(keys / "trust")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(DATASET)




@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


@pytest.fixture
def frmr(dataset: Dataset, keys: Path) -> Iterator[FrmrEmulator]:
    with FrmrEmulator(dataset, TOKEN, signer=signer(keys, "frmr")) as emulator:
        yield emulator


@pytest.fixture
def frmo(dataset: Dataset, keys: Path) -> Iterator[FrmoEmulator]:
    with FrmoEmulator(dataset, signer=signer(keys, "frmo", "rsa")) as emulator:
        yield emulator


def frmr_client(http: httpx.Client, url: str, keys: Path, trust: TrustStore, *, token: str = TOKEN,
                required: bool = True) -> FrmrClient:
    return FrmrClient(http, url, token, trust=trust, signers=[signer(keys, "frmr").certificate],
                      signature_required=required)


@pytest.fixture
def make_frmo(keys: Path, trust: TrustStore) -> Iterator[Callable[..., FrmoClient]]:
    made: list[FrmoClient] = []

    def make(url: str, *, timeout: float = 5.0, required: bool = True) -> FrmoClient:
        made.append(FrmoClient(url, timeout=timeout, trust=trust, signers=[signer(keys, "frmo", "rsa").certificate],
                               signature_required=required))
        return made[-1]

    yield make
    for client in made:
        client.close()


def failure(call: Callable[[], RegistryReply]) -> RegistryCallFailed:
    with pytest.raises(RegistryCallFailed) as exc:
        call()
    return exc.value


def registry_signed(reply: RegistryReply, name: str, algorithm: str) -> bool:
    evidence = reply.signed_by
    return (evidence.get("subject", "").startswith(f"CN={name},") and evidence.get("algorithm") == algorithm
            and len(evidence.get("fingerprint", "")) == 64 and bool(evidence.get("serial")))


# ---------------------------------------------------------------- ФРМР

@pytest.mark.parametrize("snils,organisation,kw,verdict", [  # cases of test_registry_verdicts
    ("11223344595", None, {}, "valid"),
    ("11223344595", None, {"specialty": "Хирургия"}, "expired"),
    ("45678912344", None, {}, "revoked"),
    ("56789123453", MO_CLOSED, {}, "expired"),
    (UNKNOWN_SNILS, None, {}, "not-found"),
])
def test_frmr_answers_give_the_verdicts(frmr, http, keys, trust, snils, organisation, kw, verdict):
    reply = frmr_client(http, frmr.url, keys, trust).person(snils, organisation)
    assert registry_signed(reply, "frmr", "gost2012-256"), reply.signed_by
    answer = worker_answer(snils, reply.record, organisation=organisation, on=TODAY, checked_at=NOW, **kw)
    assert answer.findtext(f"{{{WORKER_NS}}}Verdict") == verdict
    expected_query = {"snils": snils} | ({"mo": organisation} if organisation else {})
    assert [c.query for c in frmr.requests] == [expected_query]


def test_frmr_record_is_the_content_as_sent(frmr, http, keys, trust):
    reply = frmr_client(http, frmr.url, keys, trust).person(KNOWN_SNILS)
    assert reply.record is not None
    assert (reply.record["snils"], reply.record["lastName"]) == (KNOWN_SNILS, "Иванова")
    assert reply.record["cards"][0]["organization"] == MO_VALID and reply.record["cards"][0]["beginDate"]


def test_frmr_not_found_is_an_answer_only_when_signed(frmr, http, keys, trust, dataset):
    reply = frmr_client(http, frmr.url, keys, trust).person(UNKNOWN_SNILS)
    assert reply.record is None and reply.signed_by["algorithm"] == "gost2012-256"
    with FrmrEmulator(dataset, TOKEN) as unsigned:
        exc = failure(lambda: frmr_client(http, unsigned.url, keys, trust).person(UNKNOWN_SNILS))
    assert exc.detail.startswith("SIGNATURE_REQUIRED") and not exc.retryable


@pytest.mark.parametrize("script", [["http-503"], ["http-502"], ["http-429"], ["http-408"], ["drop"]])
def test_frmr_passing_trouble_is_retryable(frmr, http, keys, trust, script):
    frmr.set_script(script)
    client = frmr_client(http, frmr.url, keys, trust)
    exc = failure(lambda: client.person(KNOWN_SNILS))
    assert exc.retryable and KNOWN_SNILS not in exc.detail, exc.detail
    assert client.person(KNOWN_SNILS).record is not None  # the next call is answered
    assert [c.answer for c in frmr.requests] == [script[0], "ok"]


def test_frmr_connection_refused_is_retryable(http, keys, trust):
    exc = failure(lambda: frmr_client(http, f"http://127.0.0.1:{free_port()}", keys, trust).person(KNOWN_SNILS))
    assert exc.retryable and "ConnectError" in exc.detail


def test_frmr_slow_answer_times_out_retryable(frmr, keys, trust):
    frmr.set_script(["slow:5"])
    with httpx.Client(timeout=0.5) as short:
        started = time.monotonic()
        exc = failure(lambda: frmr_client(short, frmr.url, keys, trust).person(KNOWN_SNILS))
    # gave up before the registry answered (a loaded machine adds to the 0.5 s, never 4.5 s)
    assert exc.retryable and "Timeout" in exc.detail and time.monotonic() - started < 5


def test_frmr_wrong_token_is_permanent(frmr, http, keys, trust):
    exc = failure(lambda: frmr_client(http, frmr.url, keys, trust, token="stale").person(KNOWN_SNILS))
    assert not exc.retryable and "HTTP 401" in exc.detail and "unauthorized" in exc.detail
    assert KNOWN_SNILS not in exc.detail


def test_frmr_malformed_snils_is_permanent_and_not_quoted(frmr, http, keys, trust):
    bad = "11223344596"  # check digit wrong
    exc = failure(lambda: frmr_client(http, frmr.url, keys, trust).person(bad))
    assert not exc.retryable and "HTTP 400" in exc.detail and "snils" in exc.detail
    assert bad not in exc.detail


def test_frmr_http_403_is_permanent(frmr, http, keys, trust):
    frmr.set_script(["http-403"])
    exc = failure(lambda: frmr_client(http, frmr.url, keys, trust).person(KNOWN_SNILS))
    assert not exc.retryable and "HTTP 403" in exc.detail


@pytest.mark.parametrize("snils", [KNOWN_SNILS, UNKNOWN_SNILS])
def test_frmr_bad_signature_is_permanent(frmr, http, keys, trust, snils):
    frmr.set_script(["bad-signature"])
    exc = failure(lambda: frmr_client(http, frmr.url, keys, trust).person(snils))
    assert exc.detail.startswith("SIGNATURE_INVALID: ФРМР") and not exc.retryable
    assert snils not in exc.detail


def test_frmr_someone_elses_signature_is_refused_even_when_not_required(dataset, http, keys, trust):
    with FrmrEmulator(dataset, TOKEN, signer=signer(keys, "other")) as impostor:
        for required in (True, False):
            exc = failure(lambda: frmr_client(http, impostor.url, keys, trust, required=required).person(KNOWN_SNILS))
            assert exc.detail.startswith("CERTIFICATE_SENDER_MISMATCH") and not exc.retryable


def test_frmr_unsigned_answers(dataset, http, keys, trust):
    with FrmrEmulator(dataset, TOKEN) as unsigned:
        exc = failure(lambda: frmr_client(http, unsigned.url, keys, trust).person(KNOWN_SNILS))
        assert exc.detail.startswith("SIGNATURE_REQUIRED") and not exc.retryable
        reply = frmr_client(http, unsigned.url, keys, trust, required=False).person(KNOWN_SNILS)
    assert reply.signed_by == {} and reply.record is not None and reply.record["snils"] == KNOWN_SNILS


@pytest.mark.parametrize("script,retry_after", [(["http-429:7"], 7.0), (["http-503:30"], 30.0), (["http-503"], None)])
def test_frmr_retry_after_over_the_wire(frmr, http, keys, trust, script, retry_after):
    frmr.set_script(script)
    exc = failure(lambda: frmr_client(http, frmr.url, keys, trust).person(KNOWN_SNILS))
    assert exc.retryable and exc.retry_after == retry_after


def test_frmr_retry_after_as_seconds_or_date(keys, trust):
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}, json={"message": "slow down"}),
                    httpx.Response(503, headers={"Retry-After": later}),
                    httpx.Response(503)])
    with httpx.Client(transport=httpx.MockTransport(lambda request: next(answers))) as mock:
        client = frmr_client(mock, "http://frmr.invalid", keys, trust)
        first, second, third = (failure(lambda: client.person(KNOWN_SNILS)) for _ in range(3))
    assert (first.retryable, first.retry_after) == (True, 7.0) and "slow down" in first.detail
    assert second.retryable and second.retry_after is not None and 80 < second.retry_after <= 90
    assert third.retryable and third.retry_after is None


# ---------------------------------------------------------------- ФРМО

@pytest.mark.parametrize("key,value,verdict", [  # cases of test_registry_verdicts
    ("oid", MO_VALID, "valid"),
    ("oid", MO_CLOSED, "closed"),
    ("oid", "1.2.643.5.1.13.13.12.2.77.1003", "revoked"),
    ("oid", "1.2.643.5.1.13.13.12.2.77.1004", "expired"),
    ("ogrn", "1037700004044", "expired"),
    ("oid", MO_UNKNOWN, "not-found"),
])
def test_frmo_answers_give_the_verdicts(frmo, make_frmo, key, value, verdict):
    reply = make_frmo(frmo.url).organisation(**{key: value})
    assert registry_signed(reply, "frmo", "rsa-sha256"), reply.signed_by
    answer = organisation_answer(reply.record, on=TODAY, checked_at=NOW)
    assert answer.findtext(f"{{{ORGANISATION_NS}}}Verdict") == verdict


def test_frmo_record_shape(frmo, make_frmo):
    record = make_frmo(frmo.url).organisation(oid=MO_VALID).record
    assert record is not None
    assert {"oid", "nameFull", "ogrn", "inn", "deleteDate", "licence"} <= set(record)
    assert (record["oid"], record["ogrn"], record["inn"], record["deleteDate"]) == (
        MO_VALID, "1027700001010", "7701001012", None)
    assert record["licence"] == {"number": "Л041-01151-77/00000001", "issuedAt": "2019-02-11", "validTo": None,
                                 "revoked": False}


def test_frmo_signed_by_gost_too(dataset, keys, trust):
    with FrmoEmulator(dataset, signer=signer(keys, "frmo")) as gost:
        client = FrmoClient(gost.url, timeout=5.0, trust=trust, signers=[signer(keys, "frmo").certificate])
        try:
            assert registry_signed(client.organisation(oid=MO_VALID), "frmo", "gost2012-256")
        finally:
            client.close()


@pytest.mark.parametrize("script", [["server-fault"], ["http-503"], ["http-500"], ["http-429"]])
def test_frmo_passing_trouble_is_retryable(frmo, make_frmo, script):
    frmo.set_script(script)
    client = make_frmo(frmo.url)
    exc = failure(lambda: client.organisation(oid=MO_VALID))
    assert exc.retryable, exc.detail
    assert client.organisation(oid=MO_VALID).record is not None
    assert [c.answer for c in frmo.requests] == [script[0], "ok"]


@pytest.mark.parametrize("script,retry_after", [(["http-429:7"], 7.0), (["http-503:30"], 30.0), (["http-503"], None)])
def test_frmo_retry_after(frmo, make_frmo, script, retry_after):
    frmo.set_script(script)
    exc = failure(lambda: make_frmo(frmo.url).organisation(oid=MO_VALID))
    assert exc.retryable and exc.retry_after == retry_after and "HTTP" in exc.detail


def test_frmo_calls_go_to_the_configured_url_not_the_wsdls(dataset, keys, trust, frmo):
    with FrmoEmulator(dataset, signer=signer(keys, "frmo", "rsa")) as describer:
        client = FrmoClient(frmo.url, timeout=5.0, trust=trust, signers=[signer(keys, "frmo", "rsa").certificate],
                            wsdl=describer.wsdl_url)
        try:
            assert client.organisation(oid=MO_VALID).record is not None
        finally:
            client.close()
        assert (len(describer.requests), len(frmo.requests)) == (0, 1)


def test_frmo_slow_answer_times_out_retryable(frmo, make_frmo):
    client = make_frmo(frmo.url, timeout=0.5)
    for attempt in range(3):  # the WSDL is loaded (a first call may take longer than 0.5 s on a loaded machine)
        try:
            client.organisation(oid=MO_VALID)
            break
        except RegistryCallFailed:
            assert attempt < 2, "ФРМО did not answer a plain call within 0.5 s three times"
    frmo.set_script(["slow:5"])  # now the call itself is slow
    started = time.monotonic()
    exc = failure(lambda: client.organisation(oid=MO_VALID))
    assert exc.retryable and "Timeout" in exc.detail and time.monotonic() - started < 5  # before the answer


@pytest.mark.parametrize("kw,message", [({}, "oid or ogrn required"), ({"ogrn": "12345"}, "13 digits")])
def test_frmo_client_faults_are_permanent(frmo, make_frmo, kw, message):
    exc = failure(lambda: make_frmo(frmo.url).organisation(**kw))
    assert not exc.retryable and "Client" in exc.detail and message in exc.detail


def test_frmo_http_403_is_permanent(frmo, make_frmo):
    frmo.set_script(["http-403"])
    exc = failure(lambda: make_frmo(frmo.url).organisation(oid=MO_VALID))
    assert not exc.retryable and "HTTP 403" in exc.detail


@pytest.mark.parametrize("oid", [MO_VALID, MO_UNKNOWN])
def test_frmo_bad_signature_is_permanent(frmo, make_frmo, oid):
    frmo.set_script(["bad-signature"])
    exc = failure(lambda: make_frmo(frmo.url).organisation(oid=oid))
    assert exc.detail.startswith("SIGNATURE_DIGEST_MISMATCH: ФРМО") and not exc.retryable


def test_frmo_faults_are_verified_too(frmo, make_frmo):
    """A fault altered after signing is refused for its signature, not taken for what it says."""
    frmo.set_script(["bad-signature"])
    exc = failure(lambda: make_frmo(frmo.url).organisation(ogrn="12345"))
    assert exc.detail.startswith("SIGNATURE_DIGEST_MISMATCH") and "13 digits" not in exc.detail
    assert [c.outcome for c in frmo.requests] == ["client-fault"]


def test_frmo_unsigned_answers(dataset, make_frmo):
    with FrmoEmulator(dataset, script=["ok", "ok", "server-fault"]) as unsigned:
        required = make_frmo(unsigned.url)
        for oid in (MO_VALID, MO_UNKNOWN):  # a record and "not found" alike
            exc = failure(lambda: required.organisation(oid=oid))
            assert exc.detail.startswith("SIGNATURE_REQUIRED") and not exc.retryable
        assert failure(lambda: required.organisation(oid=MO_VALID)).retryable  # an unsigned server fault stays one
        relaxed = make_frmo(unsigned.url, required=False)
        reply = relaxed.organisation(oid=MO_VALID)
        assert reply.signed_by == {} and reply.record is not None and reply.record["oid"] == MO_VALID
        assert relaxed.organisation(oid=MO_UNKNOWN) == RegistryReply(None, {})


def test_frmo_someone_elses_signature_is_refused_even_when_not_required(dataset, keys, make_frmo):
    with FrmoEmulator(dataset, signer=signer(keys, "other", "rsa")) as impostor:
        for required in (True, False):
            exc = failure(lambda: make_frmo(impostor.url, required=required).organisation(oid=MO_VALID))
            assert exc.detail.startswith("CERTIFICATE_SENDER_MISMATCH") and not exc.retryable


def test_frmo_wsdl_not_loaded_is_retryable_and_not_remembered(dataset, keys, make_frmo):
    port = free_port()
    client = make_frmo(f"http://127.0.0.1:{port}/frmo/soap")
    exc = failure(lambda: client.organisation(oid=MO_VALID))
    assert exc.retryable and "WSDL" in exc.detail
    with FrmoEmulator(dataset, port=port, signer=signer(keys, "frmo", "rsa")):
        assert client.organisation(oid=MO_VALID).record is not None


def test_frmo_one_client_serves_many_threads(frmo, make_frmo):
    """Each thread gets its own answer and its own signature verdict, whatever the others get."""
    # A long timeout: the claim is about answers and verdicts per thread, and 24 threads switching every
    # microsecond against the emulator took over 5 s each on a loaded machine (all 24 timed out).
    client = make_frmo(frmo.url, timeout=60.0)
    frmo.set_script(["bad-signature"] * 8)
    results: dict[int, object] = {}
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so shared state would be caught out

    def ask(i: int) -> None:
        oid = MO_VALID if i % 2 else MO_CLOSED
        try:
            results[i] = (oid, client.organisation(oid=oid))
        except RegistryCallFailed as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        sys.setswitchinterval(switch)
    failed = [r for r in results.values() if isinstance(r, RegistryCallFailed)]
    answered = [r for r in results.values() if not isinstance(r, RegistryCallFailed)]
    assert len(results) == 24 and len(failed) == 8
    assert all(f.detail.startswith("SIGNATURE_DIGEST_MISMATCH") for f in failed)
    assert all(reply.record["oid"] == oid and reply.signed_by for oid, reply in answered)


# ---------------------------------------------------------------- over TLS

@pytest.fixture(scope="module")
def tls_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Registries that serve TLS and require the gateway's client certificate (an RSA demo CA)."""
    from demo.ca import DemoCA

    out = tmp_path_factory.mktemp("registry-tls")
    ca = DemoCA.create(out / "ca", key_type="rsa", subject="/O=Zdravlink demo/CN=Registry TLS CA")
    ca.issue(out, "registry", "rsa", tls="server")
    ca.issue(out, "gateway-client", "rsa", tls="client")
    (out / "ca.pem").write_bytes(ca.cert.read_bytes())
    return out


def registry_server(keys: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(keys / "registry-rsa.pem", keys / "registry-rsa.key")
    ctx.load_verify_locations(keys / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def channel_tls(keys: Path, *, certificate: bool = True) -> ClientTls:
    cert = ({"certificate": str(keys / "gateway-client-rsa.pem"), "key": str(keys / "gateway-client-rsa.key")}
            if certificate else {})
    return ClientTls(ca=[str(keys / "ca.pem")], system_ca=False, **cert)


def test_frmr_over_mtls_with_the_channels_client_and_refused_without_its_certificate(dataset, keys, trust, tls_keys):
    """The registry channel's httpx clients: one per distinct tls setting (adapters.tls_clients.HttpClients)."""
    clients = HttpClients(ClientContexts(tls_keys), lambda ctx: httpx.Client(
        timeout=5.0, **({"verify": ctx} if ctx is not None else {})))
    try:
        with FrmrEmulator(dataset, TOKEN, signer=signer(keys, "frmr"), tls=registry_server(tls_keys)) as emulator:
            reply = frmr_client(clients.get(channel_tls(tls_keys)), emulator.url, keys, trust).person(KNOWN_SNILS)
            assert reply.record is not None and registry_signed(reply, "frmr", "gost2012-256"), reply
            exc = failure(lambda: frmr_client(clients.get(channel_tls(tls_keys, certificate=False)), emulator.url,
                                              keys, trust).person(KNOWN_SNILS))
            assert exc.retryable  # a connection that fails: retried, then failover
            exc = failure(lambda: frmr_client(clients.default, emulator.url, keys, trust).person(KNOWN_SNILS))
            assert "CERTIFICATE_VERIFY_FAILED" in exc.detail  # the system's CAs do not know the demo CA
            assert len(emulator.requests) == 1
    finally:
        clients.close()


def test_frmo_over_mtls_through_zeeps_session(dataset, keys, trust, tls_keys):
    with FrmoEmulator(dataset, signer=signer(keys, "frmo", "rsa"), tls=registry_server(tls_keys)) as emulator:
        good = FrmoClient(emulator.url, timeout=5.0, trust=trust, signers=[signer(keys, "frmo", "rsa").certificate],
                          tls=client_context(channel_tls(tls_keys), tls_keys))
        bare = FrmoClient(emulator.url, timeout=5.0, trust=trust, signers=[signer(keys, "frmo", "rsa").certificate],
                          tls=client_context(channel_tls(tls_keys, certificate=False), tls_keys))
        try:
            reply = good.organisation(oid=MO_VALID)
            assert reply.record is not None and reply.record["oid"] == MO_VALID
            assert registry_signed(reply, "frmo", "rsa-sha256"), reply.signed_by
            exc = failure(lambda: bare.organisation(oid=MO_VALID))
            assert exc.retryable
            assert len(emulator.requests) == 1
        finally:
            good.close()
            bare.close()
