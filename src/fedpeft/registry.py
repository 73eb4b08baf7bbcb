"""Registries: the one place where names map to implementations.

Every list of names fedpeft shows (CLI ``list``, config validation, error messages) is read from here, so adding a
method is one ``register_*`` call in its own module and nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from fedpeft.errors import ConfigError

if TYPE_CHECKING:  # the registries are typed without importing the subpackages (they import us)
    from fedpeft.adapters.base import PeftMethod
    from fedpeft.algorithms.base import Algorithm
    from fedpeft.data.base import DatasetSpec
    from fedpeft.models.hub import ModelSpec

T = TypeVar("T")


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


PEFT_METHODS: Registry[PeftMethod] = Registry("peft method")
DATASETS: Registry[DatasetSpec] = Registry("dataset")
MODELS: Registry[ModelSpec] = Registry("model")
ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm", lambda: import_subpackages("fedpeft.algorithms"))


def register_peft(method: PeftMethod) -> PeftMethod:
    """Register a PEFT method instance under ``method.name``."""
    return PEFT_METHODS.register(method.name, method)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a dataset spec under ``spec.name``."""
    return DATASETS.register(spec.name, spec)


def register_model(spec: ModelSpec) -> ModelSpec:
    """Register a model short name (bundled checkpoints) under ``spec.name``."""
    return MODELS.register(spec.name, spec)


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: register a federated algorithm (a subclass of ``fedpeft.algorithms.base.Algorithm``)."""

    def wrap(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        return ALGORITHMS.register(name, cls)

    return wrap
