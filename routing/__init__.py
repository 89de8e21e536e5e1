"""Carrying accepted messages: RabbitMQ topology, outbox relay, router, and delivery with retry, failover
and dead letters."""
