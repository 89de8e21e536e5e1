"""SOAP adapters: the SMEV 3 inbound service (spyne) and outbound delivery to partners' SOAP services (zeep)."""
