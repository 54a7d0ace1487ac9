"""A package's names that need torch, loaded from their module when first read (PEP 562), so importing the
package (for its torch-free options) costs no torch."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_names(package: str, namespace: dict, modules: dict[str, str]) -> Callable[[str], object]:
    """The package's `__getattr__`: `modules` maps a name to the submodule defining it; once read, the name is
    kept in the package's `namespace` (its globals) and not looked up again."""
    def __getattr__(name: str):
        if name in modules:
            value = getattr(importlib.import_module(f"{package}.{modules[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
