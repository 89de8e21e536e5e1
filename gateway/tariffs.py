"""The tariff table (``config/tariffs/*.yaml``): which service codes an insurer pays for, at what price, when.

A service record whose code has no tariff on its date, or whose price differs from
the table, would be refused by the insurer weeks later in its protocol; refusing it at
intake tells the clinic today, while the record is still fresh in its mind.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.config import ConfigProblem, _key, _rule


class Tariff(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    code: str = Field(min_length=1, max_length=20)
    name: str = Field(min_length=1)
    price: Decimal = Field(ge=0, decimal_places=2)
    valid_from: dt.date = Field(alias="from")
    valid_to: dt.date | None = Field(None, alias="to")

    @model_validator(mode="after")
    def _order(self) -> Tariff:
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError(f"'to' ({self.valid_to}) is before 'from' ({self.valid_from})")
        return self


class _TariffFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tariffs: list[Tariff]


class TariffTable:
    def __init__(self, tariffs: list[Tariff]) -> None:
        self._by_code: dict[str, list[Tariff]] = {}
        for t in tariffs:
            self._by_code.setdefault(t.code, []).append(t)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_code.values())

    def knows(self, code: str) -> bool:
        return code in self._by_code

    def prices_on(self, day: dt.date) -> dict[str, Decimal]:
        """Every code's price in force on ``day``."""
        return {code: t.price for code in self._by_code if (t := self.on(code, day)) is not None}

    def on(self, code: str, day: dt.date) -> Tariff | None:
        """The tariff for ``code`` in force on ``day``."""
        return next((t for t in self._by_code.get(code, ())
                     if t.valid_from <= day and (t.valid_to is None or day <= t.valid_to)), None)


def load_tariffs(directory: Path, problems: list[ConfigProblem]) -> TariffTable:
    """Every ``tariffs/*.yaml``; overlapping periods of one code are a problem (which price would apply?)."""
    found: list[Tariff] = []
    for path in sorted((directory / "tariffs").glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            parsed = _TariffFile.model_validate(data)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(ConfigProblem(str(path), "(file)", f"cannot read: {exc}"))
            continue
        except ValidationError as exc:
            problems.extend(ConfigProblem(str(path), _key(e["loc"]), _rule(e)) for e in exc.errors())
            continue
        for i, t in enumerate(parsed.tariffs):
            for other in found:
                if other.code == t.code and t.valid_from <= (other.valid_to or dt.date.max) \
                        and other.valid_from <= (t.valid_to or dt.date.max):
                    problems.append(ConfigProblem(str(path), f"tariffs[{i}]",
                                                  f"code {t.code} overlaps another period of the same code "
                                                  f"({other.valid_from}–{other.valid_to or 'open'})"))
            found.append(t)
    return TariffTable(found)
