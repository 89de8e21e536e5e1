"""Configuration text for tests, in the same YAML an operator writes."""
from __future__ import annotations

from pathlib import Path

from gateway.config import hash_token

LAB_TOKEN = "lab-secret-token"
CLINIC_TOKEN = "clinic-secret-token"
NOTICE_NS = "urn://zdravlink/types/notice/1.0"


def participants(clinic_url: str, clinic_format: str = "xml", keys: Path | None = None,
                 lab_signs: bool = False) -> str:
    """Two participants; with ``keys`` (the demo_keys fixture) each lists its GOST and RSA certificates."""
    def certs(name: str) -> str:
        if keys is None:
            return ""
        return f'    certificates: ["{keys / f"{name}-gost2012-256.pem"}", "{keys / f"{name}-rsa.pem"}"]\n'

    return f"""
participants:
  - mnemonic: lab
    name: Test laboratory
    kind: lis
    credentials: {{api_token_sha256: ["{hash_token(LAB_TOKEN)}"]}}
    delivery: {{mode: pull}}
    signature_required: {str(lab_signs).lower()}
{certs("lab")}  - mnemonic: clinic
    name: Test clinic MIS
    kind: mis
    credentials: {{api_token_sha256: ["{hash_token(CLINIC_TOKEN)}"]}}
    delivery: {{mode: rest, url: "{clinic_url}", format: {clinic_format}}}
{certs("clinic")}"""


def routes(channels: list[tuple[str, str]] | None = None, attempts: int = 5, initial_delay: float = 0.05,
           multiplier: float = 2.0, max_delay: float = 2.0, condition: str | None = None,
           max_total_seconds: float | None = None) -> str:
    chan = ""
    if channels:
        chan = "    channels:\n" + "".join(
            f'      - {{name: {name}, mode: rest, url: "{url}"}}\n' for name, url in channels
        )
    cond = f'    condition: "{condition}"\n' if condition else ""
    budget = f", max_total_seconds: {max_total_seconds}" if max_total_seconds else ""
    return f"""
defaults:
  retry: {{attempts: {attempts}, initial_delay: {initial_delay}, multiplier: {multiplier}, jitter: 0.0, max_delay: {max_delay}{budget}}}
routes:
  - name: lab-to-clinic
    sender: lab
    message_type: "{NOTICE_NS}"
    recipient: clinic
{cond}{chan}"""


def settings(in_process_max_delay: float = 5.0, failure_threshold: int = 5, reset_timeout: float = 30.0,
             max_body_bytes: int = 1048576, keys: Path | None = None, gateway_key: str = "gost2012-256") -> str:
    """Gateway settings; with ``keys`` the gateway signs deliveries with its ``gateway_key`` demo key."""
    signing = ""
    if keys is not None:
        signing = (f'signing: {{key: "{keys / f"gateway-{gateway_key}.key"}", '
                   f'certificate: "{keys / f"gateway-{gateway_key}.pem"}", trust_store: "{keys / "trust"}"}}\n')
    return f"""
api: {{max_body_bytes: {max_body_bytes}}}
delivery: {{timeout_seconds: 5.0, in_process_max_delay: {in_process_max_delay}}}
circuit_breaker: {{failure_threshold: {failure_threshold}, reset_timeout_seconds: {reset_timeout}}}
relay: {{batch_size: 200, poll_interval_seconds: 0.1}}
{signing}"""
