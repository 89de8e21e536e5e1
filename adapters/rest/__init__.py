"""REST inbound adapter: the HTTP API partners post envelopes to and read status from."""
