"""What ``@dataclass`` would add to the sdk's value classes, without importing ``dataclasses``.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``): a cost on the
worker's import path (see ``sdk._lazy``). A record class writes its ``__init__`` by hand, lists
its fields in ``__match_args__`` (in the order of ``__init__``'s parameters, as a dataclass
does) and gets from :func:`record` what a dataclass would generate, with the same behaviour:

- ``==`` and ``hash`` over the fields (instances of the same class only), the same ``repr``;
- frozen: ``dataclasses.FrozenInstanceError`` on assignment (``dataclasses`` is imported only
  to raise it);
- ``__dataclass_fields__`` and ``__dataclass_params__``, built (by ``dataclasses``) the first
  time something asks for them, so that ``dataclasses.is_dataclass``, ``fields``, ``replace``
  and ``asdict`` (and pydantic, which reads them) treat these classes as dataclasses. Nothing
  in a worker asks.
"""

from __future__ import annotations

import reprlib
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _T = TypeVar("_T", bound=type)


def record(
    *, frozen: bool = False, factories: dict[str, Callable[[], Any]] | None = None
) -> Callable[[_T], _T]:
    """Class decorator: what ``@dataclass(frozen=frozen)`` adds to a class that defines its
    own ``__init__`` (see the module docstring). ``factories`` names the fields whose default
    is a ``default_factory`` (``__init__`` makes the value itself)."""

    def decorate(decorated: _T) -> _T:
        cls: Any = decorated
        fields: tuple[str, ...] = cls.__dict__["__match_args__"]

        def __eq__(self: Any, other: object) -> Any:
            if other.__class__ is self.__class__:
                return tuple([getattr(self, n) for n in fields]) == tuple(
                    [getattr(other, n) for n in fields]
                )
            return NotImplemented

        @reprlib.recursive_repr()
        def __repr__(self: Any) -> str:
            inner = ", ".join([f"{n}={getattr(self, n)!r}" for n in fields])
            return f"{self.__class__.__qualname__}({inner})"

        methods: dict[str, Any] = {"__eq__": __eq__, "__repr__": __repr__, "__hash__": None}
        if frozen:

            def __hash__(self: Any) -> int:
                return hash(tuple([getattr(self, n) for n in fields]))

            def __setattr__(self: Any, name: str, value: Any) -> None:
                if type(self) is cls or name in fields:
                    raise _frozen_error(f"cannot assign to field {name!r}")
                super(cls, self).__setattr__(name, value)

            def __delattr__(self: Any, name: str) -> None:
                if type(self) is cls or name in fields:
                    raise _frozen_error(f"cannot delete field {name!r}")
                super(cls, self).__delattr__(name)

            methods.update(__hash__=__hash__, __setattr__=__setattr__, __delattr__=__delattr__)
        for name, method in methods.items():
            if method is not None:
                method.__qualname__ = f"{cls.__qualname__}.{name}"
            setattr(cls, name, method)
        for attr in ("__dataclass_fields__", "__dataclass_params__"):
            setattr(cls, attr, _DataclassAttribute(attr, cls, frozen, factories or {}))
        return decorated

    return decorate


class _DataclassAttribute:
    """``__dataclass_fields__`` or ``__dataclass_params__`` of a record class, until first
    read: then ``dataclasses`` makes both (for a twin dataclass with the same fields and
    defaults) and they replace the descriptors on the class."""

    def __init__(
        self, name: str, cls: type, frozen: bool, factories: dict[str, Callable[[], Any]]
    ) -> None:
        self.name = name
        self.cls = cls
        self.frozen = frozen
        self.factories = factories

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        import dataclasses
        import inspect  # dataclasses imports it anyway

        cls = self.cls
        names: tuple[str, ...] = cls.__dict__["__match_args__"]
        init = cls.__dict__["__init__"]
        defaults = init.__defaults__ or ()
        annotations = inspect.get_annotations(cls)
        namespace: dict[str, Any] = {
            "__annotations__": {n: _resolve(cls, annotations.get(n, "Any")) for n in names},
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        for name, default in zip(names[len(names) - len(defaults) :], defaults, strict=True):
            factory = self.factories.get(name)
            if factory is not None:
                namespace[name] = dataclasses.field(default_factory=factory)
            else:
                namespace[name] = default
        twin: Any = dataclasses.dataclass(frozen=self.frozen)(type(cls.__name__, (), namespace))
        fields, params = twin.__dataclass_fields__, twin.__dataclass_params__
        type.__setattr__(cls, "__dataclass_fields__", fields)
        type.__setattr__(cls, "__dataclass_params__", params)
        return fields if self.name == "__dataclass_fields__" else params


def _resolve(cls: type, annotation: Any) -> Any:
    """An annotation of ``cls`` (a string: ``from __future__ import annotations``) as the object
    it names, so that pydantic can build a schema from the fields. The names typing and
    collections.abc give are resolved as well (the sdk imports them for type checkers only);
    an annotation that names something else the module does not have stays a string."""
    if not isinstance(annotation, str):
        return annotation
    import collections.abc
    import typing

    namespace = {name: getattr(typing, name) for name in typing.__all__}
    namespace.update(vars(collections.abc))
    namespace.update(vars(sys.modules[cls.__module__]))
    try:
        return typing.get_type_hints(_Holder(annotation), globalns=namespace)["value"]
    except Exception:
        return annotation


class _Holder:
    """One annotation to resolve, in the shape ``typing.get_type_hints`` reads."""

    def __init__(self, annotation: str) -> None:
        self.__annotations__ = {"value": annotation}


def _frozen_error(message: str) -> Exception:
    from dataclasses import FrozenInstanceError  # lazily: only a mistake reaches this

    return FrozenInstanceError(message)
