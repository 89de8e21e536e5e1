"""/metrics parses as OpenMetrics and as the classic text format, with the journal up or down."""
from __future__ import annotations

from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gateway.journal import Journal
from monitoring import metrics
from monitoring.exposition import GatewayStateCollector, render

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"  # Prometheus asks so


def _families(body: bytes, parser) -> dict[str, object]:
    return {f.name: f for f in parser(body.decode())}


def test_the_exposition_is_valid_openmetrics_with_the_dead_gauge_apart_from_the_dead_counter(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    journal.migrate()
    metrics.DEAD.labels("lab-to-clinic", "clinic").inc()
    state = GatewayStateCollector(journal, lambda: {"zl.dead": 1})
    body, content_type = render(state, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    families = _families(body, parse_openmetrics)  # raises on a clash, a bad name or a missing # EOF
    assert families["zl_messages_dead"].type == "counter" and families["zl_dead_messages"].type == "gauge"
    assert families["zl_journal_up"].samples[0].value == 1 and "zl_relay_lag_seconds" in families
    text, plain = render(state)
    assert plain.startswith("text/plain") and "zl_dead_messages 0.0" in text.decode()
    assert "zl_messages_dead_total" in _families(text, parse_text) or "zl_messages_dead" in _families(text, parse_text)


def test_a_journal_out_of_reach_reads_zero_up_and_the_exposition_still_parses(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")  # never migrated: every read fails, as when it is down
    body, _ = render(GatewayStateCollector(journal, dict), OPENMETRICS)
    families = _families(body, parse_openmetrics)
    assert families["zl_journal_up"].samples[0].value == 0 and not families["zl_dead_messages"].samples
