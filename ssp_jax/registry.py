"""Name -> function registries for the swappable pieces (losses, advantage estimators, reward shapes).

Config names a piece by string (`RLConfig.loss = "ppo_clip"`), so a sweep swaps it without code
changes. Every registered function is also `gin.configurable` under its registry name: a gin file
can bind any argument the caller leaves unset (e.g. `grpo.eps = 1e-4`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import gin

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A small name -> function table; `kind` ("loss", "advantage", ...) appears in error messages
    and in the gin module (`ssp_jax.<kind>`)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: store `fn` as `name` and make it gin-configurable as `name`.

        Registering the same function again is a no-op; a different function under a taken name
        is an error, so two pieces never silently shadow each other.
        """

        def decorate(fn: F) -> F:
            existing = self._fns.get(name)
            if existing is not None:
                if existing is fn or getattr(existing, "__wrapped__", None) is fn:
                    return existing
                raise ValueError(f"{self.kind} {name!r} is already registered to "
                                 f"{existing.__module__}.{existing.__qualname__}")
            # Interactive mode lets a reloaded module re-register its (new) function objects.
            with gin.config.interactive_mode():
                wrapped = gin.configurable(name, module=f"ssp_jax.{self.kind}")(fn)
            self._fns[name] = wrapped
            return wrapped

        return decorate

    def get(self, name: str) -> F:
        if name not in self._fns:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._fns)}")
        return self._fns[name]

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

