"""The demo: partner emulators, a demo CA with keys for every participant, and the demo commands.

Shipped with the gateway so that ``scripts/run`` and ``zdravlink demo …`` work out of the
box, and used by the tests as real partners on 127.0.0.1. Product code never imports it:
the ``zdravlink`` command finds the demo commands as a plugin (entry point group
``zdravlink.cli``), and an import-linter contract fails CI on any product import of ``demo``.
"""
