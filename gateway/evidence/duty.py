"""The evidence duty: seal what the writers committed, checkpoint the head, have it timestamped, prune; until stopped.

It runs as a thread of the reconciler (one per deployment, as the sweeper), with the
retention pruner every ``retention.interval_seconds`` when a rule asks for one, in a thread of
its own: a run over a large journal takes minutes at its ``share``, and sealing and checkpoints
go on meanwhile. Never on a message's path: accepting and delivering do not wait for sealing, signing or the TSA.
A second one (two reconcilers by mistake) is harmless: the head row lets one sealer at
a time extend the chain, and a checkpoint's batch is its primary key.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from gateway.config import EvidenceSettings, GatewayConfig
from gateway.evidence.checkpoints import Checkpointer, Round
from gateway.evidence.retention import Pruner
from gateway.evidence.sealer import Sealer
from gateway.evidence.tsa import TsaClient
from gateway.journal import Journal
from gateway.journal.exclusive import Busy
from signing.trust import TrustStore
from signing.xmldsig import Signer

log = logging.getLogger("zdravlink.evidence")


def trust_dirs(config: GatewayConfig) -> tuple[Path | None, Path | None]:
    """The trust store directories: the gateway's (``signing.trust_store``) and the TSA's (default the same)."""
    s = config.settings

    def path(where: str | None) -> Path | None:
        if where is None:
            return None
        return Path(where) if Path(where).is_absolute() else config.directory / where

    return path(s.signing.trust_store), path(s.evidence.tsa_trust_store or s.signing.trust_store)


def tsa_trust(config: GatewayConfig) -> TrustStore | None:
    """The trust anchors for TSA certificates: ``evidence.tsa_trust_store``, else ``signing.trust_store``."""
    where = trust_dirs(config)[1]
    return TrustStore.from_directory(where) if where is not None else None


def pruner(config: GatewayConfig, journal: Journal, share: float | None = None) -> Pruner:
    """The configured pruner; ``share`` overrides ``retention.share`` (an operator's run by hand)."""
    s = config.settings.retention
    if share is not None:
        s = s.model_copy(update={"share": share})
    archives = Path(s.archive_dir)  # relative to the working directory, as the bundled journal's sqlite path
    trust, tsa = trust_dirs(config)
    return Pruner(journal, s, archives, trust_store=trust, tsa_trust_store=tsa)


class EvidenceDuty:
    def __init__(self, journal: Journal, settings: EvidenceSettings, signer: Signer | None,
                 tsa: TsaClient | None, pruner: Pruner | None = None, prune_every: float = 3600.0) -> None:
        self.settings = settings
        self.pruner = pruner
        self.prune_every = prune_every
        self.sealer = Sealer(journal, settings.max_batch)
        self.checkpointer = Checkpointer(journal, signer, tsa, interval=settings.checkpoint_interval_seconds,
                                         every_batches=settings.checkpoint_every_batches,
                                         retry_max=settings.tsa_retry_max_seconds)

    @classmethod
    def of(cls, config: GatewayConfig, journal: Journal, signer: Signer | None) -> EvidenceDuty:
        s = config.settings.evidence
        trust = tsa_trust(config) if s.tsa_url else None
        tsa = TsaClient(s.tsa_url, trust, s.tsa_timeout_seconds) if s.tsa_url and trust is not None else None
        if s.tsa_url and tsa is None:
            log.warning("evidence.tsa_url is set but no trust store for TSA certificates: checkpoints go unstamped")
        retention = config.settings.retention
        return cls(journal, s, signer, tsa, pruner(config, journal) if retention.active else None,
                   retention.interval_seconds)

    def run_once(self, force_checkpoint: bool = False) -> tuple[int, Round]:
        """One round: the batches sealed, and what the checkpointer did."""
        sealed = self.sealer.seal_once()
        if force_checkpoint:
            made = self.checkpointer.make(force=True)
            stamped, failure = self.checkpointer.timestamp_waiting()
            return len(sealed), Round(made, stamped, failure)
        return len(sealed), self.checkpointer.run_once()

    def run(self, stopping: threading.Event) -> None:
        pruning = None
        if self.pruner is not None:
            pruning = threading.Thread(target=self._prune, args=(self.pruner, stopping), name="retention",
                                       daemon=True)
            pruning.start()
        while not stopping.wait(self.settings.seal_interval_seconds):
            try:
                self.run_once()
            except Exception:  # the journal out of reach: the next round tries again
                log.exception("evidence round failed")
        if pruning is not None:
            pruning.join()

    def _prune(self, pruner: Pruner, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                pruner.run_once(stopping=stopping)
            except Busy:
                log.info("retention: a run by hand (journal prune) is under way; this one waits for the next interval")
            except Exception:  # the journal out of reach: the next interval tries again
                log.exception("retention run failed")
            stopping.wait(self.prune_every)
