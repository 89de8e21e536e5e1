"""The base every layer may import: the version and the root of the project's exceptions (``zdravlink.errors``)."""

__version__ = "0.1.0"
