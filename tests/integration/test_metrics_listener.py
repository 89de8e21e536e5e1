"""/metrics on a listener of its own, behind a scrape token, in the real API process."""
from __future__ import annotations

import httpx
import pytest

from demo.emulators.rest_recipient import RecipientServer
from gateway.config import hash_token
from tests.support import configs
from tests.support.ports import free_port

pytestmark = pytest.mark.broker


def test_metrics_leave_the_api_port_for_their_own_and_ask_for_the_token(gateway_factory, demo_keys):
    clinic = RecipientServer(name="clinic").start()
    try:
        port = free_port()
        settings = configs.settings(keys=demo_keys) + (
            f'metrics: {{port: {port}, token_sha256: ["{hash_token("scrape-secret")}"]}}\n')
        gw = gateway_factory(configs.participants(clinic.url), configs.routes(), settings=settings)
        assert gw.http.get("/metrics").status_code == 404
        own = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(own).status_code == 401
        r = httpx.get(own, headers={"Authorization": "Bearer scrape-secret"})
        assert r.status_code == 200 and "zl_messages_in_flight" in r.text
        expiry = [line for line in r.text.splitlines() if line.startswith("zl_certificate_expiry_days{")]
        assert expiry and all('subject="hidden"' in line for line in expiry)
        assert "CN=" not in r.text
        assert gw.http.get("/healthz").status_code == 200  # the API itself is unchanged
    finally:
        clinic.stop()
