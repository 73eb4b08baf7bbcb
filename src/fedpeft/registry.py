"""Registries: the one place where names map to implementations.

Every list of names fedpeft shows (CLI ``list``, config validation, error messages) is read from here, so adding a
method is one ``register_*`` call in its own module and nothing else changes.

This module sits at the bottom of the package (it imports only ``errors``): the registered objects' own types live
in the packages above, which import this one, so the registries hold ``Any`` here and each package offers a typed
accessor (``fedpeft.adapters.get_method``, ``fedpeft.data.get_dataset``, ``fedpeft.algorithms.get_algorithm``).
Each registry imports its built-in components by module name on its first lookup (``importlib``), so a lookup never
depends on what happened to be imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from fedpeft.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C")


class Registry(Generic[T]):
    """A name -> object table for one kind of component (PEFT methods, datasets, models, algorithms)."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader  # imports the modules that register the built-in items, on first lookup

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def register(self, name: str, obj: T) -> T:
        """Add ``obj`` under ``name``; registering a name twice is a programming error."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@REG.decorator("name")`` registers the decorated object and returns it unchanged."""

        def wrap(obj: T) -> T:
            return self.register(name, obj)

        return wrap

    def get(self, name: str, field: str | None = None) -> T:
        """Look ``name`` up; an unknown name raises ConfigError listing the registered names."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(field or self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __len__(self) -> int:
        self._load()
        return len(self._items)


def import_subpackages(package: str) -> None:
    """Import every subpackage of ``package`` (found on disk, no hand-kept list): how built-in algorithms register."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        if info.ispkg:
            importlib.import_module(info.name)


def load_plugins(modules: Iterable[str], field: str = "plugins") -> None:
    """Import modules that register their own algorithms, datasets or methods (``plugins = ["my_pkg.algo"]`` in a
    recipe: imported in the server and in every client process before the config's names are looked up)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(field, name, f"an importable module ({exc})") from None


def _importer(module: str) -> Callable[[], None]:
    """A registry loader that imports ``module`` (which registers the built-in components)."""

    def load() -> None:
        importlib.import_module(module)

    return load


# Values are typed Any here: their classes (PeftMethod, DatasetSpec, ModelSpec, Algorithm) live in the packages
# above this one; the typed accessors named in the module docstring cast them back.
PEFT_METHODS: Registry[Any] = Registry("peft method", _importer("fedpeft.adapters"))
DATASETS: Registry[Any] = Registry("dataset", _importer("fedpeft.data"))
MODELS: Registry[Any] = Registry("model", _importer("fedpeft.models"))
ALGORITHMS: Registry[Any] = Registry("algorithm", lambda: import_subpackages("fedpeft.algorithms"))
#: named training losses (factories; ``fedpeft.training.losses.make_loss`` builds them)
LOSSES: Registry[Any] = Registry("loss", _importer("fedpeft.training.losses"))
#: wire compressors by name (factories; ``fedpeft.comm.compression.make_compressor`` builds them)
COMPRESSORS: Registry[Any] = Registry("compressor", _importer("fedpeft.comm.compression"))


def register_peft(method: C) -> C:
    """Register a PEFT method instance (a ``fedpeft.adapters.base.PeftMethod``) under ``method.name``."""
    return PEFT_METHODS.register(method.name, method)  # type: ignore[attr-defined,no-any-return]


def register_dataset(spec: C) -> C:
    """Register a dataset spec (a ``fedpeft.data.base.DatasetSpec``) under ``spec.name``."""
    return DATASETS.register(spec.name, spec)  # type: ignore[attr-defined,no-any-return]


def register_model(spec: C) -> C:
    """Register a model short name (a ``fedpeft.models.hub.ModelSpec``) under ``spec.name``."""
    return MODELS.register(spec.name, spec)  # type: ignore[attr-defined,no-any-return]


def register_algorithm(name: str) -> Callable[[C], C]:
    """Class decorator: register a federated algorithm (a subclass of ``fedpeft.algorithms.base.Algorithm``)."""

    def wrap(cls: C) -> C:
        cls.name = name  # type: ignore[attr-defined]
        return ALGORITHMS.register(name, cls)  # type: ignore[no-any-return]

    return wrap
