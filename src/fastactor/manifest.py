"""``fastactor.toml``: a function's manifest (SPEC §6), read with tomllib, checked field by
field, and the owner/reference resolution of actor types across the functions served."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .actor import StatefulActor, check_actor_class, signature_of

__all__ = ["Binding", "Function", "ManifestError", "load_function", "resolve"]

_NAME = re.compile(r"[a-z0-9-]+\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FIELDS = {"name", "main", "account", "port", "actors"}


class ManifestError(Exception):
    """A manifest or binding problem; the message names the file, the field and the type."""


@dataclass(frozen=True)
class Binding:
    binding: str
    type: str


@dataclass
class Function:
    name: str
    path: Path  # the fastactor.toml
    main: Path
    account: str
    port: int | None
    actors: list[Binding]
    module: ModuleType | None = None
    owned: dict[str, type[StatefulActor]] = field(default_factory=dict)

    @property
    def fetch(self) -> Any:
        return getattr(self.module, "fetch", None)


def _fail(path: Path, msg: str) -> ManifestError:
    return ManifestError(f"{path}: {msg}")


def load_function(directory: str | Path) -> Function:
    """Reads and checks DIR/fastactor.toml and imports the module its ``main`` names."""
    d = Path(directory)
    path = d / "fastactor.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "no such file (a function directory needs a fastactor.toml)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"not valid TOML: {e}") from None
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise _fail(path, f"unknown field {unknown[0]!r}")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(path, "field 'name' must be a string of [a-z0-9-]+")
    main = data.get("main")
    if not isinstance(main, str) or not main:
        raise _fail(path, "field 'main' must name the module file, relative to this file")
    main_path = (d / main).resolve()
    if not main_path.is_file():
        raise _fail(path, f"field 'main': {main_path} does not exist")
    account = data.get("account", "default")
    if not isinstance(account, str) or not _NAME.match(account):
        raise _fail(path, "field 'account' must be a string of [a-z0-9-]+")
    port = data.get("port")
    if port is not None and (type(port) is not int or not 1 <= port <= 65535):
        raise _fail(path, "field 'port' must be an integer from 1 to 65535")
    actors_raw = data.get("actors", [])
    if not isinstance(actors_raw, list):
        raise _fail(path, "field 'actors' must be an array of tables ([[actors]])")
    actors: list[Binding] = []
    seen: set[str] = set()
    for i, a in enumerate(actors_raw):
        where = f"actors[{i}]"
        if not isinstance(a, dict) or set(a) - {"binding", "type"}:
            raise _fail(path, f"{where} takes exactly 'binding' and 'type'")
        b, t = a.get("binding"), a.get("type")
        if b == "SECRETS":
            raise _fail(path, f"{where}.binding 'SECRETS' is reserved")
        if not isinstance(b, str) or not _IDENT.match(b) or "__" in b:
            raise _fail(path, f"{where}.binding {b!r} must be an identifier without '__'")
        if not isinstance(t, str) or not _IDENT.match(t) or "__" in t or len(t) > 32:
            raise _fail(
                path,
                f"{where}.type {t!r} (binding {b}) must be an identifier "
                "without '__', at most 32 characters",
            )
        if b in seen:
            raise _fail(path, f"{where}.binding {b} is declared twice")
        seen.add(b)
        actors.append(Binding(b, t))
    fn = Function(name, path, main_path, account, port, actors)
    fn.module = _import(fn)
    if not callable(fn.fetch):
        raise _fail(path, f"{main_path.name} defines no fetch(request, env)")
    sig = signature_of(fn.fetch)
    if sig is not None:  # else a builtin: found out at the first request
        try:
            sig.bind(None, None)
        except TypeError:
            raise _fail(path, f"{main_path.name}: fetch{sig} must take (request, env)") from None
    for b in actors:
        cls = getattr(fn.module, b.type, None)
        if isinstance(cls, type) and issubclass(cls, StatefulActor):
            fn.owned[b.type] = cls
    return fn


def _import(fn: Function) -> ModuleType:
    modname = f"fastactor_fn_{fn.account}_{fn.name}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(modname, fn.main)
    if spec is None or spec.loader is None:
        raise _fail(fn.path, f"cannot import {fn.main}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    sys.path.insert(0, str(fn.main.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise _fail(fn.path, f"importing {fn.main.name} raised {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(fn.main.parent))
    return module


def resolve(functions: list[Function]) -> dict[tuple[str, str], type[StatefulActor]]:
    """Owner/reference resolution: maps (account, type) to the owning class. A reference
    with no owner in its account, two owners of one type in one account, or a class whose
    name is not the declared type are errors naming the file, binding and type."""
    owners: dict[tuple[str, str], tuple[Function, type[StatefulActor]]] = {}
    names: set[tuple[str, str]] = set()
    for fn in functions:
        if (fn.account, fn.name) in names:
            raise _fail(fn.path, f"two functions named {fn.name!r} in account {fn.account!r}")
        names.add((fn.account, fn.name))
        for b in fn.actors:
            cls = fn.owned.get(b.type)
            if cls is None:
                continue
            if cls.__name__ != b.type:
                raise _fail(
                    fn.path,
                    f"binding {b.binding}: type {b.type} names class "
                    f"{cls.__name__}; the class name must match the type",
                )
            try:
                check_actor_class(cls)
            except (TypeError, ValueError) as e:
                raise _fail(fn.path, f"binding {b.binding}: type {b.type}: {e}") from None
            key = (fn.account, b.type)
            if key in owners and owners[key][1] is not cls:
                raise _fail(
                    fn.path,
                    f"binding {b.binding}: type {b.type} is also owned by "
                    f"{owners[key][0].path} in account {fn.account!r}",
                )
            owners[key] = (fn, cls)
    for fn in functions:
        for b in fn.actors:
            if (fn.account, b.type) not in owners:
                raise _fail(
                    fn.path,
                    f"binding {b.binding}: no function of account "
                    f"{fn.account!r} owns type {b.type} (define class "
                    f"{b.type}(StatefulActor) in its owner's module)",
                )
    return {k: v[1] for k, v in owners.items()}
