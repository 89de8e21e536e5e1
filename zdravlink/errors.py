"""One root for every error the gateway raises on purpose, so a caller can tell ours from the rest.

    ZdravlinkError
    ├── RefusedError          input the gateway refuses or cannot read; the sender gets it back
    │   ├── gateway.errors.Rejection          a refusal with a code and a field (problem+json, SOAP fault, HL7 NAK)
    │   ├── adapters.hl7v2.ack.Hl7Rejected    an HL7 message refused before mapping (AR)
    │   ├── adapters.hl7v2.oru.MappingGaps    a lab message the lab's mapping cannot carry (AE, kept for replay)
    │   ├── adapters.fhir.validation.FhirInvalid
    │   ├── adapters.soap.smev_faults.SmevFault  the SMEV fault a refusal becomes
    │   ├── gateway.oms.OmsFileError          an OMS register or protocol file that is not what it says
    │   └── gateway.evidence.archive.ArchiveError  a journal archive that cannot be read as one
    ├── ConfigurationError    a configuration that cannot work; found at start-up or by check-config
    │   ├── gateway.config.ConfigError        every problem at once, each with its file, key and rule
    │   ├── gateway.tls.TlsConfigError        a TLS key, certificate or CA file that cannot be used
    │   ├── gateway.oms.profiles.EditionError, gateway.oms.layout.LayoutError, adapters.acts.builder.RegisterError
    │   ├── routing.topology.TopologyMismatch queues declared with other arguments by an earlier version
    │   └── application.reachability.CannotListen  a listening address (api, hl7 …) taken or not this host's
    ├── SigningError          keys, certificates, signatures and the SMEV transform
    │   ├── signing.errors.SignatureError     a signature refused, with its code
    │   │   └── gateway.tls.PeerRefused       a TLS client certificate refused (CLIENT_CERTIFICATE_*)
    │   └── signing: CryptoError, KeyFileError, TransformError
    ├── ExchangeError         a peer or the broker did not do its part; the message is retried, never lost
    │   ├── routing.pipelined.BrokerUnavailable, routing.router.NotConfirmed
    │   ├── adapters.registries.clients.RegistryCallFailed, adapters.soap.push.WsdlUnusable
    │   ├── gateway.tls.PinMismatch           a recipient's certificate is not pinned (also an ssl error)
    │   └── adapters.hl7v2.mllp.FrameTooLarge
    └── Interrupt             not a failure: a signal between the gateway's own parts
        └── routing.journal_gate.WorkerStopping, adapters.soap.smev_exchange.Audited (a refusal already
            audited), adapters.soap.smev_service.SmevSoapFault (carries it to spyne's serialiser),
            gateway.journal.exclusive.Busy (another process is doing it: a prune run)

The demo's own errors (``demo``) descend from these too. Errors of the libraries we
use are not wrapped: where they matter (the journal's database, the broker) a
classifier says what they mean (``gateway.journal.store.unavailable``).
"""
from __future__ import annotations


class ZdravlinkError(Exception):
    """The root: every error the gateway raises on purpose."""


class RefusedError(ZdravlinkError):
    """Input the gateway refuses or cannot read; the sender is told why, and the refusal is audited."""


class ConfigurationError(ZdravlinkError):
    """A configuration that cannot work: found when the gateway starts, or by ``zdravlink check-config``."""


class SigningError(ZdravlinkError):
    """Keys, certificates, XML signatures and the SMEV transform."""


class ExchangeError(ZdravlinkError):
    """A partner, a registry or the broker did not do its part; what depends on it is retried, never lost."""


class Interrupt(ZdravlinkError):
    """Not a failure: one part of the gateway telling another to stop or that something is already handled."""
