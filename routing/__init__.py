"""Carrying accepted messages: RabbitMQ topology, outbox relay, router, delivery with retry, failover and dead letters."""
