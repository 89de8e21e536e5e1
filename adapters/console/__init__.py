"""The operator's console at ``/console``: find any message, see why, replay it, with roles and an audit.

Public surface: ``build_console`` (what the API process mounts), ``operators``
(``operators.yaml``: accounts, roles, console settings) and ``commands`` (the
``zdravlink operator`` and ``zdravlink messages`` commands). Pages and their checks
are in ``web``; the System page's broker and worker facts in ``system``; labels in
Russian and English in ``labels``. The journal queries are ``gateway.journal.search``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.console.web import Console
    from adapters.intake import Intake
    from adapters.mapping.lab_mapping import LabMapping
    from gateway.config import GatewayConfig
    from gateway.journal import Journal

__all__ = ["build_console"]


def build_console(config: GatewayConfig, journal: Journal, intake: Intake,
                  mappings: dict[str, LabMapping]) -> Console | None:
    """The console for this gateway, or None when ``operators.yaml`` turns it off (``console.enabled: false``)."""
    from adapters.console.operators import load_operators
    from adapters.console.web import Console
    from adapters.hl7v2.lab_intake import LabIntake, replay_kept
    from gateway.journal import MessageRecord

    operators = load_operators(config.directory)
    if not operators.console.enabled:
        return None
    labs = LabIntake(intake, mappings) if mappings else None

    def remap(records: list[MessageRecord]) -> list[tuple[str, object]]:
        assert labs is not None
        return list(replay_kept(labs, records))

    return Console(config, journal, operators, mappings, remap if labs is not None else None)
