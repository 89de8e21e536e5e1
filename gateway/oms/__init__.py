"""The OMS register of bills as files: names, the H/L pair in its ZIP, layouts from regional schemas,
region profiles and editions, the ФЛК-side checks, and the ФЛК protocol an insurer answers with.

It lives in the core because the accept pipeline reads protocols against the acts it sent;
building acts from service records is ``adapters.acts``. Facts and their sources:
docs/service-acts.md and ../shared/research/oms-format.md.

Modules: ``names`` (file names), ``archive`` (the ZIP, windows-1251 files), ``layout`` (element order
from a region's XSD), ``profiles`` (regions, editions, insurer bindings), ``schema_check`` and
``checks`` (the ФЛК-side checks), ``flk`` (the protocol), ``services`` (which records an error
names); and ``OmsFileError`` for any file that cannot be read or written as the format says.
"""
from __future__ import annotations

from zdravlink.errors import RefusedError


class OmsFileError(RefusedError, ValueError):
    """A register or protocol file that is not what the format says; the message names the file and the rule."""
