"""What every process does first: logging, and finding and loading its configuration."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, ConfigProblem, GatewayConfig, load_config
from gateway.schemas import known_message_types


def setup_logging(name: str) -> None:
    from monitoring.logs import configure  # ZL_LOG_FORMAT=json: one JSON object per line

    configure(name, os.environ.get("ZL_LOG_LEVEL", "INFO"))
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # spyne logs every soap:Client fault it sends at ERROR with a traceback: a caller's mistake, which
    # the SMEV service already audits, and the emulators' "not found". Server faults stay logged.
    logging.getLogger("spyne.application.client").setLevel(logging.CRITICAL)
    # spyne keeps one global registry of applications by namespace and name, and warns "Overwriting
    # application" when a second one registers: the SMEV service and the demo's SOAP partners share the
    # official SMEV namespace on purpose, and nothing is overwritten that anyone looks up.
    logging.getLogger("spyne.util.appreg").setLevel(logging.ERROR)


def config_dir(given: str | Path | None = None) -> Path:
    return Path(given or os.environ.get("ZL_CONFIG_DIR") or "config")


def load(directory: str | Path | None = None) -> GatewayConfig:
    return load_config(config_dir(directory), known_message_types=known_message_types())


def load_lab_mappings(config: GatewayConfig) -> dict[str, Any]:
    """Every lab mapping file in ``<config>/mappings``; raise ConfigError listing every problem."""
    from adapters.mapping.lab_mapping import load_mappings

    problems: list[ConfigProblem] = []
    found = load_mappings(config.directory, set(config.participants), problems)
    if problems:
        raise ConfigError(problems)
    return found


def has_registry_routes(config: GatewayConfig) -> bool:
    return any(c.mode == "registry" for r in config.routes for c in r.channels)
