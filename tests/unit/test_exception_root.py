"""One exception root: every exception class the project defines descends from ZdravlinkError."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from zdravlink.errors import ZdravlinkError

PACKAGES = ["zdravlink", "signing", "gateway", "monitoring", "routing", "adapters", "application", "demo"]


def our_exception_classes() -> list[type[BaseException]]:
    found = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")
                             if ".migrations" not in m.name and not m.name.endswith("__main__")]
        for name in names:
            module = importlib.import_module(name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == name:
                    found.append(obj)
    return found


def test_there_are_exceptions_to_check() -> None:
    assert len(our_exception_classes()) > 20


@pytest.mark.parametrize("cls", our_exception_classes(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_exception_of_ours_descends_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, ZdravlinkError), f"{cls.__module__}.{cls.__qualname__} is not a ZdravlinkError"
