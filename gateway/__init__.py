"""The core of Zdravlink: envelope, accept pipeline, journal, configuration, CLI.

Everything else (adapters, routing, signing, monitoring) builds on this package;
nothing here imports from those packages except the CLI and app wiring, which sit
at the top of the dependency graph on purpose.
"""
