"""Which back end a pool or executor runs on: the local engine, a Dask cluster or a Ray
cluster; from its ``backend=`` and ``address=``, else ``paralelo.set_backend()``, else
the ``PARALELO_BACKEND`` environment variable, else the local engine.

A back end is named ``"local"``, ``"dask"`` or ``"ray"``; an address may come with it,
as ``address=`` or in the name: ``"dask://host:8786"`` (a Dask scheduler,
``tcp://host:8786``), ``"ray://host:10001"`` (a Ray cluster's client server). With no
address, the pool starts a cluster of its own on this machine, bound to 127.0.0.1, and
stops it when it closes.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

__all__ = ["Choice", "available", "chosen", "pool_class", "set_backend"]

#: What each cluster back end needs installed: (modules, what to install).
NEEDS = {
    "dask": (("dask", "distributed"), "pip install 'paralelo[dask]' (dask and distributed)"),
    "ray": (("ray",), "pip install 'paralelo[ray]' (ray, with its client for ray:// addresses)"),
}
NAMES = ("local", "dask", "ray")


@dataclass(frozen=True)
class Choice:
    """A back end (``"local"``, ``"dask"`` or ``"ray"``) and its cluster's address (None:
    a local cluster of the pool's own)."""

    backend: str
    address: str | None = None

    @property
    def local(self) -> bool:
        return self.backend == "local"


_default: Choice | None = None


def parse(backend: str, address: str | None = None) -> Choice:
    """The `Choice` a ``backend=`` (and ``address=``) names; ValueError if it names none."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string ('local', 'dask', 'ray', 'dask://host:port', "
                        f"'ray://host:port'), not {type(backend).__name__}")
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a string such as 'tcp://host:8786', not {type(address).__name__}")
    name, sep, rest = backend.strip().partition("://")
    name = name.lower()
    if name == "paralelo":
        name = "local"
    if name not in NAMES:
        raise ValueError(f"unknown backend {backend!r}: expected 'local', 'dask', 'ray', "
                         "'dask://host:port' or 'ray://host:port'")
    if sep:
        if not rest or name == "local":
            raise ValueError(f"bad backend {backend!r}: an address goes with 'dask' or 'ray', "
                             "as 'dask://host:8786' or 'ray://host:10001'")
        if address is not None:
            raise ValueError(f"backend {backend!r} names its address already; address={address!r} is one too many")
        if name == "dask":  # (a scheme of its own, "dask://tls://host:8786", is Dask's)
            address = rest if "://" in rest else f"tcp://{rest}"
        else:
            address = f"ray://{rest}"
    if name == "local" and address is not None:
        raise ValueError("address= goes with backend='dask' or 'ray', not with the local engine")
    if address is not None and not address.strip():
        raise ValueError("address= is empty")
    return Choice(name, address)


def set_backend(backend: str | None, address: str | None = None) -> None:
    """Makes `backend` (``"local"``, ``"dask"``, ``"ray"``, ``"dask://host:port"`` or
    ``"ray://host:port"``; ``address=`` as a pool's) the default of every pool and
    executor made from now on without a ``backend=`` of its own; ``None`` returns to
    ``PARALELO_BACKEND`` (or the local engine)."""
    global _default
    _default = None if backend is None else parse(backend, address)


def chosen(backend: str | None, address: str | None) -> Choice:
    """The back end a pool made with ``backend=``, ``address=`` runs on."""
    if backend is not None:
        return parse(backend, address)
    if address is not None:
        raise ValueError("address= needs backend='dask' or backend='ray'")
    if _default is not None:
        return _default
    env = os.environ.get("PARALELO_BACKEND", "").strip()
    if env:
        try:
            return parse(env)
        except ValueError as e:
            raise ValueError(f"PARALELO_BACKEND: {e}") from None
    return Choice("local")


def pool_class(cls: type, backend: str | None, address: str | None, inline: bool | None,
               load: Callable[[], type]) -> type:
    """The class that ``cls(..., backend=, address=, inline=)`` makes: `cls` itself on the
    local engine (or inline: debugging wins over a default cluster), else the cluster
    class `load()` gives, which a user's own subclass of `cls` cannot be."""
    from .. import _inline

    if chosen(backend, address).local or (backend is None and _inline.wanted(inline)):
        return cls
    cluster = load()
    if not issubclass(cluster, cls):
        raise TypeError(f"a subclass of {cluster.__mro__[1].__name__} ({cls.__qualname__}) runs on the local "
                        "engine only, not with a backend= or PARALELO_BACKEND naming a cluster")
    return cluster


def missing(backend: str) -> str | None:
    """What to install for `backend`, if something is missing (None if nothing is)."""
    modules, install = NEEDS.get(backend, ((), ""))
    if all(importlib.util.find_spec(m) is not None for m in modules):
        return None
    return install


def available() -> dict[str, bool]:
    """Each back end, and whether what it needs is installed."""
    return {name: name == "local" or missing(name) is None for name in NAMES}
