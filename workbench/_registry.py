"""A tiny name -> object registry used for methods, models and SAE kinds.

A decorator registers; a duplicate name raises; an unknown name raises with the list of valid
names (the timm convention). Written here because it is ten lines and every capability needs it.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects.

    Args:
        kind: what is registered, used in error messages ("attribution method").

    Examples:
        >>> methods = Registry("method")
        >>> @methods.register("double")
        ... def double(x):
        ...     return 2 * x
        >>> methods.get("double")(3)
        6
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; used as ``@reg.register("name")`` or directly."""

        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"a {self.kind} named {name!r} is already registered; pick another name.")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` or raise with the valid names."""
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s are: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
