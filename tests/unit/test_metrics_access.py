"""Who may read /metrics: loopback only by default, a scrape token, or a port of its own."""
from __future__ import annotations

import pytest
from starlette.requests import Request

from adapters.rest.app import _check_scrape
from gateway.config import MetricsSettings, hash_token
from gateway.errors import Rejection
from monitoring.exposition import certificate_labels


def request(client: str, server_port: int = 8700, token: str | None = None) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return Request({"type": "http", "method": "GET", "path": "/metrics", "headers": headers,
                    "client": (client, 50000), "server": ("0.0.0.0", server_port)})


def refused(req: Request, settings: MetricsSettings) -> tuple[int, str]:
    with pytest.raises(Rejection) as exc:
        _check_scrape(req, settings)
    return exc.value.status, exc.value.code


def test_by_default_only_loopback_clients_may_scrape() -> None:
    default = MetricsSettings()
    _check_scrape(request("127.0.0.1"), default)
    _check_scrape(request("::1"), default)
    assert refused(request("192.0.2.7"), default) == (403, "METRICS_FORBIDDEN")


def test_a_scrape_token_admits_any_host_that_has_it_and_nobody_else() -> None:
    with_token = MetricsSettings(token_sha256=[hash_token("scrape-secret")])
    _check_scrape(request("192.0.2.7", token="scrape-secret"), with_token)
    assert refused(request("127.0.0.1"), with_token) == (401, "AUTHENTICATION_REQUIRED")
    assert refused(request("192.0.2.7", token="guess"), with_token) == (401, "INVALID_TOKEN")


def test_a_metrics_port_takes_metrics_off_the_api_port() -> None:
    own_port = MetricsSettings(host="0.0.0.0", port=9709)
    assert refused(request("127.0.0.1", server_port=8700), own_port)[0] == 404
    _check_scrape(request("192.0.2.7", server_port=9709), own_port)


def test_certificate_subjects_and_serials_show_only_when_configured() -> None:
    assert certificate_labels("CN=Lab", "0A1B", True) == ("CN=Lab", "0A1B")
    hidden = certificate_labels("CN=Lab", "0A1B", False)
    assert hidden[0] == "hidden" and "0A1B" not in hidden[1] and len(hidden[1]) == 12
    assert hidden != certificate_labels("CN=Lab", "0A1C", False)  # still one series per certificate
