"""Configuration as files: settings, participants and routes, loaded into typed models.

An operator edits YAML in git; a mistake must stop start-up with the file, the key
path and the rule it broke, all mistakes at once, rather than surface later as a
message that cannot be routed. ``zdravlink check-config`` prints the same list.

Environment overrides, applied after the files: ``ZL_DATABASE_URL`` (database.url),
``ZL_AMQP_URL`` (broker.url: one node, or a cluster's nodes separated by commas, in place of
broker.urls), ``ZL_BROKER_PREFIX`` (broker.prefix), ``ZL_API_PORT`` (api.port), ``ZL_MLLP_PORT``
(hl7.port). Deployments keep secrets and addresses out of the files this way.
"""
from __future__ import annotations

import os
import random
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import yaml
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from gateway.credentials import ApiToken, ClientCertificate
from gateway.credentials import hash_token as hash_token  # where the rest of the gateway imports it from
from gateway.ratelimit import RateLimit
from gateway.tls import ClientTls, ServerTls, listener_rule
from zdravlink.errors import ConfigurationError

MNEMONIC = r"^[a-z0-9][a-z0-9_-]{1,49}$"
Kind = Literal["mis", "lis", "insurer", "registry"]
ENV_VAR = r"^[A-Z_][A-Z0-9_]*$"

#: The request type each registry protocol answers (payload namespaces, schemas_xsd/payloads).
WORKER_VERIFICATION_NS = "urn://zdravlink/types/worker-verification/1.0"
ORGANISATION_VERIFICATION_NS = "urn://zdravlink/types/organisation-verification/1.0"
REGISTRY_MESSAGE_TYPES = {"frmr": WORKER_VERIFICATION_NS, "frmo": ORGANISATION_VERIFICATION_NS}


class ConfigProblem(NamedTuple):
    file: str
    key: str
    rule: str


class ConfigError(ConfigurationError):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(f"{p.file}: {p.key}: {p.rule}" for p in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host (got {value!r})")
    return value


def _token_digests(values: list[str]) -> list[str]:
    """API and scrape tokens are kept as SHA-256 digests only, so the files never hold a usable token."""
    for v in values:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("each entry must be 64 lower-case hex digits (printf %s TOKEN | zdravlink hash-token)")
    return values


# ---- settings (gateway.yaml) ------------------------------------------------

class ApiSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=1, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    #: API processes on this host, all on the one port (SO_REUSEPORT; the kernel spreads connections).
    #: Each runs an outbox relay on PostgreSQL (they share the outbox); on SQLite only the first does.
    processes: int = Field(1, ge=1, le=32)
    #: TLS (and client certificates) on the API, the SMEV endpoint and /metrics (docs/transport-security.md).
    tls: ServerTls | None = None
    #: Serve plain HTTP on a non-loopback address on purpose: TLS ends at a proxy in front.
    plain: bool = False

    @model_validator(mode="after")
    def _transport(self) -> ApiSettings:
        if (rule := listener_rule(self.host, self.tls, self.plain)) is not None:
            raise ValueError(rule)
        return self


class DatabaseSettings(_Strict):
    url: str = "sqlite:///var/journal.db"


class BrokerSettings(_Strict):
    #: One node's URL, or several separated by commas (so ``ZL_AMQP_URL`` can name a cluster's nodes).
    url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    #: The nodes of a RabbitMQ cluster; when given, ``url`` is not used. Connections fail over between them.
    urls: list[str] = []
    prefix: str = Field("zl", pattern=r"^[a-z0-9][a-z0-9_.-]{0,30}$")
    prefetch: int = Field(32, ge=1, le=1000)
    #: The router's window: it routes what it holds as one group (one read, one confirmed publish,
    #: one commit), so its window bounds the group. At 32 the router made groups of about 15 and
    #: fell seconds behind on PostgreSQL while idle (docs/PERFORMANCE.md).
    router_prefetch: int = Field(128, ge=1, le=1000)
    #: Redeliveries of one message before RabbitMQ gives up on it (a handler that fails on it every
    #: time) and dead-letters it to the poison queue, where the reconciler records it DEAD. A queue
    #: argument: changing it for existing queues means declaring them anew (docs/RELIABILITY.md).
    delivery_limit: int = Field(20, ge=2, le=1000)
    #: Replicas of each quorum queue (``x-quorum-initial-group-size``), capped by the cluster's size.
    #: Unset: RabbitMQ puts one on every node of the cluster at declaration (1 on a single node, 3 on
    #: three). A queue argument too, so set it before the first start (docs/scaling.md).
    quorum_replicas: int | None = Field(None, ge=1, le=9)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node's URL, as the broker connections try them (routing.broker)."""
        return tuple(self.urls) or tuple(u.strip() for u in self.url.split(",") if u.strip())

    @field_validator("urls")
    @classmethod
    def _amqp_urls(cls, values: list[str]) -> list[str]:
        for v in values:
            if urlsplit(v).scheme not in ("amqp", "amqps"):
                raise ValueError(f"each node is an amqp:// or amqps:// URL (got {v!r})")
        return values


class WorkerSettings(_Strict):
    delivery: int = Field(2, ge=1, le=64)


class DeliverySettings(_Strict):
    timeout_seconds: float = Field(10.0, gt=0)
    in_process_max_delay: float = Field(5.0, ge=0)


class BreakerSettings(_Strict):
    failure_threshold: int = Field(5, ge=1)
    reset_timeout_seconds: float = Field(30.0, gt=0)


class RelaySettings(_Strict):
    batch_size: int = Field(500, ge=1)
    #: How soon the relay looks again after a poll found work. An accept in the relay's own process
    #: wakes it at once; this bounds the wait for messages accepted elsewhere (the MLLP worker, a
    #: replay from the CLI, another API process on PostgreSQL).
    poll_interval_seconds: float = Field(0.2, gt=0)
    #: The polling consumer's idle backoff (Camel's ``backoffMultiplier``): each empty poll doubles the
    #: wait up to this, and any work or wake-up brings it back to ``poll_interval_seconds``. An idle
    #: gateway polled five times a second cost 4–5 % of a core on this project's 2-core machine, where
    #: every wake-up of a sleeping process costs milliseconds (docs/PERFORMANCE.md).
    idle_poll_max_seconds: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _backoff_not_below_the_interval(self) -> RelaySettings:
        if self.idle_poll_max_seconds < self.poll_interval_seconds:
            raise ValueError(f"idle_poll_max_seconds must be at least poll_interval_seconds (got "
                             f"{self.idle_poll_max_seconds} and {self.poll_interval_seconds})")
        return self


class SigningSettings(_Strict):
    """The gateway's own key and the trust store; paths are relative to the configuration directory.

    The key and certificate come either as two files (PEM or DER) or as one PKCS#12
    file; a password is read from the environment variable named by ``password_env``,
    never from the file itself.
    """

    key: str | None = None
    certificate: str | None = None
    pkcs12: str | None = None
    password_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    algorithm: Literal["gost2012-256", "gost2012-512", "rsa-sha256"] | None = None
    trust_store: str | None = None
    smev_transform: bool = True
    sign_deliveries: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> SigningSettings:
        if self.pkcs12 and (self.key or self.certificate):
            raise ValueError("give either pkcs12 or key and certificate, not both")
        if bool(self.key) != bool(self.certificate):
            raise ValueError("key and certificate go together")
        return self

    @property
    def has_key(self) -> bool:
        return bool(self.pkcs12 or self.key)

    @property
    def key_files(self) -> tuple[str, str]:
        """The key and certificate files, for a key not given as PKCS#12 (``_one_source`` keeps the two together)."""
        if not (self.key and self.certificate):
            raise ValueError("signing: give key and certificate, or pkcs12")
        return self.key, self.certificate


class SmevSettings(_Strict):
    """SMEV 3 protocol rules of the inbound SOAP service and the pull inbox."""

    #: How long a message handed out by GetRequest/GetResponse (or the REST inbox) waits for its Ack
    #: before it is handed out again.
    pull_lock_seconds: float = Field(300.0, gt=0)
    #: A MessageID whose UUID v1 timestamp is older than this is refused as StaleMessageId.
    message_id_max_age_hours: float = Field(48.0, gt=0)
    #: How far in the future a MessageID's timestamp may lie (the sender's clock runs ahead).
    clock_skew_seconds: float = Field(300.0, ge=0)


class MetricsSettings(_Strict):
    """Who may read ``/metrics``: it names participants, queues and certificates.

    With ``port`` set, ``/metrics`` is served on its own listener (``host``:``port``) and
    not on the API's; with ``token_sha256`` set, a scrape must send one of those tokens
    as a bearer token (Prometheus: ``authorization: {credentials: …}``). With neither,
    only loopback clients may read it.
    """

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    token_sha256: list[str] = []
    #: Show certificate subjects and serials in zl_certificate_expiry_days (else a pseudonymous id).
    certificate_details: bool = False

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, values: list[str]) -> list[str]:
        return _token_digests(values)


class ReconcilerSettings(_Strict):
    """The reconciler and sweeper (``zdravlink worker reconciler``; docs/RELIABILITY.md)."""

    #: How often the sweeper looks for messages that stopped moving.
    sweep_interval_seconds: float = Field(30.0, gt=0)
    #: A message unchanged this long in PUBLISHED, ROUTED or RETRYING (past its retry's due time),
    #: with nothing in the queue its copy would wait in, is sent round again.
    stuck_after_seconds: float = Field(300.0, gt=0)


class LeaseSettings(_Strict):
    """Duties that must run on one node at a time (deadlines, acts, the sweeper) are held by a lease
    in the journal (``gateway.once_only``); a node that dies loses it within ``ttl_seconds``."""

    #: A holder that has not renewed its lease for this long has lost it; another node takes it over.
    ttl_seconds: float = Field(15.0, ge=1)
    #: How often a holder renews and a standby tries to take the lease.
    renew_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _renew_well_within_ttl(self) -> LeaseSettings:
        if self.renew_seconds * 2 > self.ttl_seconds:
            raise ValueError(f"renew_seconds must be at most half of ttl_seconds (got {self.renew_seconds} and "
                             f"{self.ttl_seconds}): a holder stops its duty before its lease can run out")
        return self


class Hl7Settings(_Strict):
    """The MLLP listener for laboratories that send HL7 v2 (see config/mappings/)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=1, le=65535)
    #: The largest message accepted; unset: the API's body limit (api.max_body_bytes).
    max_frame_bytes: int | None = Field(None, ge=1024)
    #: Connections open at once; one more is closed at once.
    max_connections: int = Field(100, ge=1)
    #: A connection that sends nothing this long is closed (labs keep theirs open between messages).
    idle_timeout_seconds: float = Field(300.0, gt=0)
    #: A message begun must end within this time (a sender trickling bytes holds memory).
    frame_timeout_seconds: float = Field(60.0, gt=0)
    #: Unfinished frames of all connections together may hold this much memory.
    max_buffered_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: MLLP over TLS; with client_ca, each lab's connection is known by its client certificate.
    tls: ServerTls | None = None
    plain: bool = False

    @model_validator(mode="after")
    def _transport(self) -> Hl7Settings:
        if self.enabled and (rule := listener_rule(self.host, self.tls, self.plain)) is not None:
            raise ValueError(rule)
        return self


class ActsSettings(_Strict):
    """When the running gateway builds and sends the previous month's acts by itself."""

    #: Day of the month (1–28) from which the previous month's acts are due; unset: only by hand.
    schedule_day: int | None = Field(None, ge=1, le=28)
    schedule_hour: int = Field(3, ge=0, le=23)


class RegistryRequestSettings(_Strict):
    """Deadline and answer cache of one registry request type."""

    #: With no registry answer this long after acceptance, the MIS gets a TIMEOUT answer.
    deadline_seconds: float = Field(120.0, gt=0)
    #: A repeated identical request inside this time is answered from the cache; 0 turns the cache off.
    cache_ttl_seconds: float = Field(0.0, ge=0)


class RegistriesSettings(_Strict):
    """Verification requests to ФРМР and ФРМО (docs/registries.md)."""

    worker_verification: RegistryRequestSettings = RegistryRequestSettings()
    organisation_verification: RegistryRequestSettings = RegistryRequestSettings()
    #: How often the deadline watcher looks for requests past their deadline.
    deadline_poll_seconds: float = Field(1.0, gt=0)

    def for_type(self, message_type: str) -> RegistryRequestSettings:
        if message_type == WORKER_VERIFICATION_NS:
            return self.worker_verification
        if message_type == ORGANISATION_VERIFICATION_NS:
            return self.organisation_verification
        raise KeyError(message_type)


class EvidenceSettings(_Strict):
    """The evidence chain (docs/journal-evidence.md): how often events are sealed and checkpoints made, the TSA.

    The duty runs in the reconciler (one per deployment); ``zdravlink journal seal`` does one round by hand.
    """

    enabled: bool = True
    seal_interval_seconds: float = Field(2.0, gt=0)
    #: Events per batch at most (a backlog after an outage is sealed in several batches).
    max_batch: int = Field(10_000, ge=1, le=1_000_000)
    checkpoint_interval_seconds: float = Field(60.0, gt=0)
    #: A checkpoint also after this many batches, whatever the interval.
    checkpoint_every_batches: int | None = Field(None, ge=1)
    #: The RFC 3161 TSA (HTTP); none: checkpoints are signed, not timestamped (a warning in verify).
    tsa_url: str | None = None
    #: The CAs a TSA's certificate must chain to (a directory as signing.trust_store); default signing.trust_store.
    tsa_trust_store: str | None = None
    tsa_timeout_seconds: float = Field(10.0, gt=0)
    #: The longest pause between two attempts while the TSA is out of reach (the first is 5 s, then doubling).
    tsa_retry_max_seconds: float = Field(300.0, gt=0)
    #: zl_evidence_timestamp_overdue is 1 (and the alert fires) when the chain has gone this long without a timestamp.
    timestamp_alert_after_seconds: float = Field(3600.0, gt=0)


class RetentionRule(_Strict):
    """How long messages of a type, or of a participant (as sender or recipient), are kept; both given: both match."""

    message_type: str | None = None
    participant: str | None = None
    #: Days after a message's last change before its envelope, events and row are removed (archived first).
    days: float | None = Field(None, gt=0)
    #: Days before only its envelope is removed (archived first); the trail stays until ``days``.
    envelope_days: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> RetentionRule:
        if self.message_type is None and self.participant is None:
            raise ValueError("a rule names a message_type, a participant or both")
        if self.days is None and self.envelope_days is None:
            raise ValueError("a rule gives days, envelope_days or both")
        if self.days is not None and self.envelope_days is not None and self.envelope_days > self.days:
            raise ValueError("envelope_days cannot be longer than days")
        return self


class RetentionSettings(_Strict):
    """Retention (docs/journal-evidence.md#retention): nothing is removed unless a rule or a default says so.

    When several rules match a message the longest time wins. Only messages at rest (DELIVERED,
    FAILED, DEAD, REJECTED) whose events are all sealed are pruned; messages a business record
    points to (service records, acts, lab result versions, registry requests) are kept; legal
    holds stop pruning of what they cover. Each run archives what it removes under ``archive_dir``
    first, and keeps every batch record (with the leaves of what it removed) so the chain verifies.
    """

    default_days: float | None = Field(None, gt=0)
    default_envelope_days: float | None = Field(None, gt=0)
    rules: list[RetentionRule] = []
    #: Where each run writes its archives (relative: to the working directory, as the default journal's path).
    archive_dir: str = "var/archives"
    interval_seconds: float = Field(3600.0, gt=0)
    #: Messages per archive and per delete transaction.
    chunk: int = Field(2000, ge=1, le=100_000)
    #: The share of a run's time spent working: after each chunk it rests for the chunk's time × (1/share − 1),
    #: so the API keeps SQLite's one write lock and a core most of the time. 1: no rest (an operator's run).
    share: float = Field(0.5, gt=0, le=1)

    @property
    def active(self) -> bool:
        return bool(self.rules or self.default_days or self.default_envelope_days)


class Settings(_Strict):
    api: ApiSettings = ApiSettings()
    database: DatabaseSettings = DatabaseSettings()
    broker: BrokerSettings = BrokerSettings()
    workers: WorkerSettings = WorkerSettings()
    delivery: DeliverySettings = DeliverySettings()
    circuit_breaker: BreakerSettings = BreakerSettings()
    relay: RelaySettings = RelaySettings()
    signing: SigningSettings = SigningSettings()
    smev: SmevSettings = SmevSettings()
    hl7: Hl7Settings = Hl7Settings()
    acts: ActsSettings = ActsSettings()
    registries: RegistriesSettings = RegistriesSettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    metrics: MetricsSettings = MetricsSettings()
    leases: LeaseSettings = LeaseSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    retention: RetentionSettings = RetentionSettings()


# ---- participants and routes ------------------------------------------------

class RetryPolicy(_Strict):
    """Camel's redelivery policy: attempts per channel, exponential delay with jitter and a cap,
    and a time budget for the whole delivery.

    These two budgets are the only things that make a message DEAD for failing to be
    delivered (a permanent refusal aside): a channel whose circuit breaker is open is
    skipped for the next one, and when every channel left is open the message waits for
    a breaker to let a trial through, without spending its attempts.
    """

    attempts: int = Field(5, ge=1)
    initial_delay: float = Field(1.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.1, ge=0, le=1)
    max_delay: float = Field(300.0, ge=0)
    #: Seconds from routing after which a message still undelivered is DEAD; null: attempts alone decide.
    max_total_seconds: float | None = Field(86_400.0, gt=0)

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> RetryPolicy:
        if self.max_delay < self.initial_delay:
            raise ValueError(f"max_delay must be ≥ initial_delay (got {self.max_delay} < {self.initial_delay})")
        return self

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


class Channel(_Strict):
    name: str = Field("default", pattern=MNEMONIC)
    mode: Literal["rest", "soap", "pull", "registry"]
    url: str | None = None
    #: What a REST recipient gets: the envelope as XML or JSON, or (lab results only) a FHIR R4 Bundle.
    format: Literal["xml", "json", "fhir"] = "xml"
    #: SOAP channels: the partner's WSDL and the operation whose single body part takes the envelope.
    wsdl: str | None = None
    operation: str = Field("Deliver", pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
    #: Registry channels: which registry protocol the url speaks (ФРМР REST or ФРМО SOAP), and for
    #: ФРМР the environment variable holding its bearer token.
    registry: Literal["frmr", "frmo"] | None = None
    token_env: str | None = Field(None, pattern=ENV_VAR)
    #: ФРМР's bearer token from a file instead (a secret mounted by the deployment, e.g. /run/secrets/frmr).
    token_file: str | None = None
    #: TLS to this endpoint: CA bundle, client certificate, pins, GOST (gateway.tls.ClientTls).
    tls: ClientTls | None = None

    _check_url = field_validator("url", "wsdl")(classmethod(lambda cls, v: _http_url(v)))

    @model_validator(mode="after")
    def _url_for_push(self) -> Channel:
        if self.mode == "rest" and not self.url:
            raise ValueError("a rest channel needs a url")
        if self.mode == "soap" and not self.wsdl:
            raise ValueError("a soap channel needs a wsdl (its url, if given, overrides the WSDL's address)")
        if self.mode == "registry":
            if not self.url or not self.registry:
                raise ValueError("a registry channel needs registry (frmr or frmo) and url")
            if self.registry == "frmr" and not (self.token_env or self.token_file):
                raise ValueError("a frmr channel needs token_env (the variable that holds ФРМР's bearer token) "
                                 "or token_file")
            if self.token_env and self.token_file:
                raise ValueError("give token_env or token_file, not both")
        elif self.registry or self.token_env or self.token_file:
            raise ValueError("registry, token_env and token_file belong to registry channels only")
        if self.tls is not None and self.mode != "pull":
            urls = [u for u in (self.url, self.wsdl) if u]
            if any(not u.startswith("https://") for u in urls):
                raise ValueError("tls needs https URLs (url and wsdl)")
        return self


class Credentials(_Strict):
    """How a participant proves who it is (gateway.credentials): API tokens, client certificates, or both."""

    #: Digests of tokens without an expiry (the short form of api_tokens).
    api_token_sha256: list[str] = []
    #: Tokens with an optional expiry and label: several at once while one replaces another.
    api_tokens: list[ApiToken] = []
    #: The TLS client certificates the participant's connections must present (one of them).
    client_certificates: list[ClientCertificate] = []

    @field_validator("api_token_sha256")
    @classmethod
    def _hex(cls, values: list[str]) -> list[str]:
        return _token_digests(values)


class CertificateFile(_Strict):
    """A certificate in a PKCS#12 file (or any file) whose password is in an environment variable."""

    file: str
    password_env: str | None = Field(None, pattern=ENV_VAR)


class Participant(_Strict):
    mnemonic: str = Field(pattern=MNEMONIC)
    name: str = Field(min_length=1)
    kind: Kind
    credentials: Credentials = Credentials()
    delivery: Channel
    #: The participant's signing certificates (several while one replaces another).
    certificates: list[str | CertificateFile] = []
    #: The participant's code in OMS registers: the СМО code of an insurer (SCHET/PLAT in its acts).
    oms_code: str | None = Field(None, pattern=r"^[0-9A-Za-z]{1,5}$")
    #: Must this participant sign what it sends? Unset: yes for registries and insurers.
    signature_required: bool | None = None
    #: Messages and bytes per second it may send (gateway.ratelimit); unset: no limit.
    rate_limit: RateLimit | None = None

    @property
    def api_token_sha256(self) -> list[str]:
        return self.credentials.api_token_sha256 + [t.sha256 for t in self.credentials.api_tokens]

    @property
    def api_tokens(self) -> list[ApiToken]:
        """Every token, the short form's as tokens without expiry."""
        return [ApiToken(sha256=d) for d in self.credentials.api_token_sha256] + self.credentials.api_tokens

    @property
    def signs_by_default(self) -> bool:
        return self.signature_required if self.signature_required is not None else self.kind in ("registry", "insurer")


class RetryOverride(_Strict):
    attempts: int | None = Field(None, ge=1)
    initial_delay: float | None = Field(None, ge=0)
    multiplier: float | None = Field(None, ge=1)
    jitter: float | None = Field(None, ge=0, le=1)
    max_delay: float | None = Field(None, ge=0)
    max_total_seconds: float | None = Field(None, gt=0)


class RouteSpec(_Strict):
    """A route as written in routes.yaml, before defaults and participants fill it in."""

    name: str = Field(pattern=MNEMONIC)
    sender: str
    message_type: str = Field(min_length=1)
    recipient: str
    condition: str | None = None
    channels: list[Channel] | None = Field(None, min_length=1)
    retry: RetryOverride = RetryOverride()
    #: Overrides the sender's ``signature_required`` for this route.
    signature_required: bool | None = None

    @field_validator("condition")
    @classmethod
    def _xpath(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                etree.XPath(value)
            except etree.XPathSyntaxError as exc:
                raise ValueError(f"not a valid XPath 1.0 expression: {exc}") from None
        return value

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, value: list[Channel] | None) -> list[Channel] | None:
        names = [c.name for c in value or []]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"channel names must be unique within a route (repeated: {', '.join(sorted(dup))})")
        return value


class Route(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str
    sender: str
    message_type: str
    recipient: str
    condition: str | None
    channels: list[Channel]
    retry: RetryPolicy
    signature_required: bool | None = None

    def requires_signature(self, sender: Participant) -> bool:
        """The route's own rule if it has one, else the sender's."""
        return self.signature_required if self.signature_required is not None else sender.signs_by_default

    @cached_property
    def _xpath(self) -> etree.XPath | None:
        return etree.XPath(self.condition) if self.condition else None

    def matches(self, payload_root: etree._Element) -> bool:
        return self._xpath is None or bool(self._xpath(payload_root))


class _ParticipantsFile(_Strict):
    participants: list[Participant]


class _Defaults(_Strict):
    retry: RetryPolicy = RetryPolicy()


class _RoutesFile(_Strict):
    defaults: _Defaults = _Defaults()
    routes: list[RouteSpec]


class GatewayConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    settings: Settings
    participants: dict[str, Participant]
    routes: list[Route]
    directory: Path

    def participant(self, mnemonic: str) -> Participant | None:
        return self.participants.get(mnemonic)

    def routes_for(self, sender: str, message_type: str, recipient: str) -> list[Route]:
        """Routes for this triple, exact sender first, then the ``*`` wildcard."""
        hits = [r for r in self.routes if r.message_type == message_type and r.recipient == recipient]
        return [r for r in hits if r.sender == sender] + [r for r in hits if r.sender == "*"]

    def resolve_route(self, sender: str, message_type: str, recipient: str,
                      payload_root: etree._Element) -> Route | None:
        return next((r for r in self.routes_for(sender, message_type, recipient) if r.matches(payload_root)), None)


# ---- loading ----------------------------------------------------------------

def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "literal[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _rule(err: ErrorDetails) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        return f"not one of: {ctx.get('expected', '').replace(' or ', ', ')} (got {got!r})"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        sign = {"greater_than_equal": "≥", "less_than_equal": "≤", "greater_than": ">", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {sign} {bound} (got {got!r})"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')} (got {got!r})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']} (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else err["msg"]


def _read_yaml(path: Path, shown: str, problems: list[ConfigProblem], required: bool) -> Any:
    if not path.exists():
        if required:
            problems.append(ConfigProblem(shown, "(file)", "missing: this file is required"))
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problems.append(ConfigProblem(shown, where, f"YAML syntax error: {getattr(exc, 'problem', exc)}"))
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(ConfigProblem(shown, "(document)", "must be a mapping of keys"))
        return None
    return data


def _validate(model: type[BaseModel], data: Any, shown: str, problems: list[ConfigProblem]) -> Any:
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(ConfigProblem(shown, _key(err["loc"]), _rule(err)))
        return None


def _apply_env(data: dict[str, Any]) -> dict[str, Any]:
    overrides = {
        "ZL_DATABASE_URL": ("database", "url"),
        "ZL_AMQP_URL": ("broker", "url"),
        "ZL_BROKER_PREFIX": ("broker", "prefix"),
        "ZL_API_PORT": ("api", "port"),
        "ZL_MLLP_PORT": ("hl7", "port"),
    }
    for var, (section, key) in overrides.items():
        if os.environ.get(var):
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][key] = os.environ[var]
    if os.environ.get("ZL_AMQP_URL") and isinstance(data.get("broker"), dict):
        data["broker"].pop("urls", None)  # the environment names the nodes (one URL, or several with commas)
    return data


def load_config(directory: Path | str, known_message_types: set[str] | None = None) -> GatewayConfig:
    """Load and cross-check the three files; raise ConfigError listing every problem."""
    base = Path(directory)
    problems: list[ConfigProblem] = []
    shown = {name: str(base / name) for name in ("gateway.yaml", "participants.yaml", "routes.yaml")}

    raw_settings = _read_yaml(base / "gateway.yaml", shown["gateway.yaml"], problems, required=False)
    settings = _validate(Settings, _apply_env(raw_settings if raw_settings is not None else {}),
                         shown["gateway.yaml"], problems)
    pfile = _validate(_ParticipantsFile, _read_yaml(base / "participants.yaml", shown["participants.yaml"],
                                                    problems, True), shown["participants.yaml"], problems)
    rfile = _validate(_RoutesFile, _read_yaml(base / "routes.yaml", shown["routes.yaml"], problems, True),
                      shown["routes.yaml"], problems)

    participants: dict[str, Participant] = {}
    if pfile is not None:
        for i, p in enumerate(pfile.participants):
            if p.mnemonic in participants:
                problems.append(ConfigProblem(shown["participants.yaml"], f"participants[{i}].mnemonic",
                                              f"duplicate mnemonic {p.mnemonic!r}"))
            participants.setdefault(p.mnemonic, p)
        owners: dict[str, str] = {}
        for i, p in enumerate(pfile.participants):
            for digest in p.api_token_sha256:
                if owners.setdefault(digest, p.mnemonic) != p.mnemonic or p.api_token_sha256.count(digest) > 1:
                    problems.append(ConfigProblem(shown["participants.yaml"], f"participants[{i}].credentials",
                                                  f"the token {digest[:12]}… is listed twice (each token names one "
                                                  "participant)"))

    routes: list[Route] = []
    if rfile is not None:
        rf = shown["routes.yaml"]
        names = [r.name for r in rfile.routes]
        seen_unconditional: dict[tuple[str, str, str], int] = {}
        for i, spec in enumerate(rfile.routes):
            if names.index(spec.name) != i:
                problems.append(ConfigProblem(rf, f"routes[{i}].name", f"duplicate route name {spec.name!r}"))
            if pfile is not None:
                if spec.sender != "*" and spec.sender not in participants:
                    problems.append(ConfigProblem(rf, f"routes[{i}].sender",
                                                  f"unknown participant {spec.sender!r} (or use \"*\")"))
                if spec.recipient not in participants:
                    problems.append(ConfigProblem(rf, f"routes[{i}].recipient",
                                                  f"unknown participant {spec.recipient!r}"))
            if known_message_types is not None and spec.message_type not in known_message_types:
                problems.append(ConfigProblem(rf, f"routes[{i}].message_type",
                                              f"unknown message type {spec.message_type!r}: no schema in "
                                              f"schemas_xsd/payloads declares it"))
            triple = (spec.sender, spec.message_type, spec.recipient)
            if spec.condition is None:
                if triple in seen_unconditional:
                    problems.append(ConfigProblem(rf, f"routes[{i}]",
                                                  f"ambiguous: same sender, message type and recipient as "
                                                  f"routes[{seen_unconditional[triple]}] and neither has a condition"))
                else:
                    seen_unconditional[triple] = i
            recipient = participants.get(spec.recipient)
            channels = spec.channels or ([recipient.delivery] if recipient else [])
            retry = RetryPolicy.model_validate(
                {**rfile.defaults.retry.model_dump(), **spec.retry.model_dump(exclude_none=True)}
            ) if not _retry_broken(rfile.defaults.retry, spec.retry, rf, i, problems) else rfile.defaults.retry
            routes.append(Route(name=spec.name, sender=spec.sender, message_type=spec.message_type,
                                recipient=spec.recipient, condition=spec.condition, channels=channels, retry=retry,
                                signature_required=spec.signature_required))
        _check_registry_routes(routes, participants, rf, problems)
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(settings=settings, participants=participants, routes=routes, directory=base)


def _retry_broken(defaults: RetryPolicy, override: RetryOverride, file: str, i: int,
                  problems: list[ConfigProblem]) -> bool:
    merged = {**defaults.model_dump(), **override.model_dump(exclude_none=True)}
    try:
        RetryPolicy.model_validate(merged)
        return False
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(ConfigProblem(file, f"routes[{i}].retry" + (f".{_key(err['loc'])}" if err["loc"] else ""),
                                          _rule(err)))
        return True


def _check_registry_routes(routes: list[Route], participants: dict[str, Participant], file: str,
                           problems: list[ConfigProblem]) -> None:
    """A registry route is a request-reply: it must ask the right registry and have a way back.

    The gateway itself sends the registry's answer (or a TIMEOUT) to whoever asked, as a
    message from the registry, so the route for that answer has to exist before the first
    request is accepted, not be discovered missing when a doctor is waiting for it.
    """
    for i, route in enumerate(routes):
        modes = {c.mode for c in route.channels}
        if "registry" not in modes:
            continue
        where = f"routes[{i}]"
        if modes != {"registry"}:
            problems.append(ConfigProblem(file, f"{where}.channels",
                                          "a route to a registry uses registry channels only (failover between them)"))
        recipient = participants.get(route.recipient)
        if recipient is not None and recipient.kind != "registry":
            problems.append(ConfigProblem(file, f"{where}.recipient",
                                          f"registry channels deliver to a participant of kind registry, "
                                          f"not {recipient.kind!r}"))
        for j, channel in enumerate(route.channels):
            wanted = REGISTRY_MESSAGE_TYPES.get(channel.registry or "")
            if wanted is not None and wanted != route.message_type:
                problems.append(ConfigProblem(file, f"{where}.channels[{j}].registry",
                                              f"{channel.registry} answers {wanted!r}, not {route.message_type!r}"))
        if route.sender == "*":
            problems.append(ConfigProblem(file, f"{where}.sender",
                                          "a registry route names its sender: answers go back by a route to it"))
        elif not any(r.sender == route.recipient and r.recipient == route.sender
                     and r.message_type == route.message_type for r in routes):
            problems.append(ConfigProblem(file, where,
                                          f"no route for the answers: add sender {route.recipient!r}, "
                                          f"message_type {route.message_type!r}, recipient {route.sender!r}"))
