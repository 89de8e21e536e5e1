"""The OMS register of bills as files: names, the H/L pair in its ZIP, layouts from regional schemas,
region profiles and editions, the ФЛК-side checks, and the ФЛК protocol an insurer answers with.

It lives in the core because the accept pipeline reads protocols against the acts it sent;
building acts from service records is ``adapters.acts``. Facts and their sources:
docs/service-acts.md and ../shared/research/oms-format.md.

Public surface: ``names``, ``archive``, ``layout``, ``profiles``, ``checks``, ``flk`` modules, and
``OmsFileError`` for any file that cannot be read or written as the format says.
"""
from __future__ import annotations


class OmsFileError(ValueError):
    """A register or protocol file that is not what the format says; the message names the file and the rule."""
