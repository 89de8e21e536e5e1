"""The XSDs and WSDL of every message the gateway reads or writes (data only; ``gateway.schemas`` loads them).

A package so that a wheel installs them beside the code: ``envelope-1.0.xsd``,
``payloads/`` (one XSD per message type), ``smev3/`` (the official SMEV 3 schemas and
WSDL) and ``oms/`` (the regions' OMS register schemas), each folder with its SOURCES.md.
"""
