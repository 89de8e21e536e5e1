"""Prometheus metrics, health and readiness: what the operator watches."""
