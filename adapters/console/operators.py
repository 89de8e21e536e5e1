"""Operators and roles, from ``operators.yaml`` in the configuration directory.

Operators live in configuration, like participants: a deployment keeps them in git,
reviewed, and the gateway needs no user database. A password is stored only as its
argon2id hash (``zdravlink operator add``). A deployment behind a single sign-on proxy
may let the proxy name the operator in a header (``console.trusted_header``), believed
only from the proxy's own addresses; the operator must still be listed here, which is
where the role comes from.

Roles, each including the one before:

* **viewer** sees statuses and trails, with patient data masked;
* **operator** also replays, maps kept lab messages again and sees payloads in full;
* **admin** also sees the configuration and the operator audit.
"""
from __future__ import annotations

import enum
import functools
import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config import ConfigError, ConfigProblem

FILE = "operators.yaml"
NAME = r"^[a-z0-9][a-z0-9._@-]{1,63}$"
_HASHER = PasswordHasher()  # argon2id with the library's current defaults (RFC 9106 low-memory profile)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so a wrong name costs what a wrong password does.
    Made on first use: an argon2 hash costs 0.15 s of CPU, which every process importing this module
    paid at start, console or not."""
    return _HASHER.hash("no such operator")


class Role(enum.IntEnum):
    viewer = 1
    operator = 2
    admin = 3


class Operator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME)
    role: Literal["viewer", "operator", "admin"]
    #: argon2id hash of the password; absent: the operator signs in through the SSO header only.
    password_hash: str | None = None
    full_name: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("$argon2"):
            raise ValueError("must be an argon2 hash (zdravlink operator add NAME --role ROLE)")
        return value

    @property
    def level(self) -> Role:
        return Role[self.role]


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    #: A session ends this long after sign-in.
    session_minutes: int = Field(480, ge=5, le=7 * 24 * 60)
    #: The Secure flag on the session cookie; browsers send it only over HTTPS (and to localhost).
    secure_cookies: bool = True
    #: The header a single sign-on proxy puts the operator's name in, e.g. X-Remote-User.
    trusted_header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    #: Addresses (or networks) of that proxy; the header is ignored from anyone else.
    trusted_proxies: list[str] = []
    #: Failed sign-ins from one address within ``login_window_minutes`` before it must wait.
    login_attempts: int = Field(5, ge=1, le=1000)
    login_window_minutes: int = Field(15, ge=1, le=1440)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_network(v, strict=False)  # ValueError names the bad one
        return values

    def is_trusted_proxy(self, host: str | None) -> bool:
        if not host or not self.trusted_header:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)


class OperatorsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    console: ConsoleSettings = ConsoleSettings()
    operators: list[Operator] = []

    def find(self, name: str) -> Operator | None:
        return next((o for o in self.operators if o.name == name), None)


def load_operators(directory: Path) -> OperatorsFile:
    """``operators.yaml``, or no operators (the console then lets nobody in); ConfigError lists every problem."""
    path = directory / FILE
    if not path.exists():
        return OperatorsFile()
    shown = str(path)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(shown, "(document)", f"YAML syntax error: {exc}")]) from None
    try:
        parsed = OperatorsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([ConfigProblem(shown, ".".join(map(str, e["loc"])) or "(document)", e["msg"])
                           for e in exc.errors()]) from None
    names = [o.name for o in parsed.operators]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError([ConfigProblem(shown, "operators", f"an operator is listed twice: {', '.join(repeated)}")])
    return parsed


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_password(operator: Operator | None, password: str) -> bool:
    """True when ``password`` is this operator's; as slow for an unknown name as for a wrong password."""
    try:
        return _HASHER.verify(operator.password_hash if operator and operator.password_hash else _dummy_hash(),
                              password) and operator is not None and operator.password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def add_operator(directory: Path, name: str, role: str, password: str | None, full_name: str | None = None) -> bool:
    """Add (or replace) an operator in ``operators.yaml``; True when it replaced one of that name.

    The file is rewritten with the other operators and the console settings as they were;
    comments are not kept (the file is data, kept in git: the diff shows the change).
    """
    path = directory / FILE
    current = load_operators(directory)
    entry = Operator(name=name, role=role,  # type: ignore[arg-type]
                     password_hash=hash_password(password) if password else None, full_name=full_name)
    replaced = current.find(name) is not None
    operators = [o for o in current.operators if o.name != name] + [entry]
    data = {"console": current.console.model_dump(exclude_defaults=True),
            "operators": [o.model_dump(exclude_none=True) for o in operators]}
    if not data["console"]:
        del data["console"]
    path.write_text("# Operators of the console (zdravlink operator add); roles: viewer, operator, admin.\n"
                    + yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return replaced
