"""Inbound and outbound protocol adapters: they translate a partner's protocol to and from the canonical envelope."""
