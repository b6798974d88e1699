"""fastactor.toml (SPEC §6): every field checked, each refusal naming the file and the field;
owner/reference resolution across functions, scoped by account."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastactor.manifest import ManifestError, load_function, resolve

OWNER_MODULE = """
from fastactor import Response, StatefulActor

class Account(StatefulActor):
    async def balance(self) -> int:
        return 0

async def fetch(request, env):
    return Response.text("ok")
"""
PLAIN_MODULE = """
async def fetch(request, env):
    return None
"""


def function(root: Path, name: str, toml: str, module: str = OWNER_MODULE) -> Path:
    d = root / name
    d.mkdir()
    (d / "fastactor.toml").write_text(toml)
    (d / "app.py").write_text(module)
    return d


ACTOR = '[[actors]]\nbinding = "ACCOUNT"\ntype = "Account"\n'


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('main = "app.py"', "field 'name'"),
        ('name = "Shop"\nmain = "app.py"', "field 'name'"),
        ('name = "s"', "field 'main'"),
        ('name = "s"\nmain = "nope.py"', "nope.py does not exist"),
        ('name = "s"\nmain = "app.py"\nport = 0', "field 'port'"),
        ('name = "s"\nmain = "app.py"\nport = "8787"', "field 'port'"),
        ('name = "s"\nmain = "app.py"\nport = true', "field 'port'"),
        ('name = "s"\nmain = "app.py"\naccount = "A B"', "field 'account'"),
        ('name = "s"\nmain = "app.py"\nbogus = 1', "unknown field 'bogus'"),
        ('name = "s"\nmain = "app.py"\nactors = 5', "field 'actors'"),
        ('name = "s\nmain = "app.py"', "not valid TOML"),
        ('name = "s"\nmain = "app.py"\n[[actors]]\nbinding = "A"\n', "actors[0].type"),
        ('name = "s"\nmain = "app.py"\n' + ACTOR.replace("ACCOUNT", "SECRETS"), "reserved"),
        ('name = "s"\nmain = "app.py"\n' + ACTOR.replace("ACCOUNT", "A__B"), "'A__B'"),
        ('name = "s"\nmain = "app.py"\n' + ACTOR.replace("ACCOUNT", "1A"), "'1A'"),
        (
            'name = "s"\nmain = "app.py"\n' + ACTOR.replace('"Account"', '"A' + "x" * 32 + '"'),
            "32",
        ),
        ('name = "s"\nmain = "app.py"\n' + ACTOR + ACTOR, "ACCOUNT is declared twice"),
        ('name = "s"\nmain = "app.py"\n' + ACTOR + "extra = 1\n", "exactly 'binding' and 'type'"),
    ],
)
def test_a_bad_manifest_names_its_file_and_field(tmp_path: Path, toml: str, says: str) -> None:
    d = function(tmp_path, "f", toml)
    with pytest.raises(ManifestError) as ei:
        load_function(d)
    assert str(d / "fastactor.toml") in str(ei.value) and says in str(ei.value), str(ei.value)


@pytest.mark.parametrize(
    ("module", "says"),
    [
        ("raise RuntimeError('no config')", "importing app.py raised RuntimeError: no config"),
        ("x = 1", "defines no fetch(request, env)"),
        ("def (:", "app.py"),
        ("async def fetch(request): pass", "app.py: fetch(request) must take (request, env)"),
        ("async def fetch(a, b, c): pass", "fetch(a, b, c) must take (request, env)"),
        ("async def fetch(*, request, env): pass", "fetch(*, request, env) must take"),
    ],
)
def test_a_module_that_does_not_load_is_a_clear_error(
    tmp_path: Path, module: str, says: str
) -> None:
    d = function(tmp_path, "f", 'name = "s"\nmain = "app.py"\n', module)
    with pytest.raises(ManifestError, match="fastactor.toml") as ei:
        load_function(d)
    assert says in str(ei.value), str(ei.value)


@pytest.mark.parametrize(
    "module",
    [
        "async def fetch(request, env): pass",
        "def fetch(request, env): pass",
        "async def fetch(request, env=None, *rest, **kw): pass",
        "async def fetch(*args): pass",
        "class F:\n    async def __call__(self, request, env): pass\nfetch = F()",
        "import functools\nasync def f(x, request, env): pass\nfetch = functools.partial(f, 1)",
    ],
)
def test_fetch_that_takes_request_and_env_loads(tmp_path: Path, module: str) -> None:
    d = function(tmp_path, "f", 'name = "s"\nmain = "app.py"\n', module)
    assert callable(load_function(d).fetch)


def test_references_resolve_to_their_accounts_owner(tmp_path: Path) -> None:
    owner = load_function(function(tmp_path, "owner", f'name = "owner"\nmain = "app.py"\n{ACTOR}'))
    ref = load_function(
        function(tmp_path, "ref", f'name = "ref"\nmain = "app.py"\n{ACTOR}', PLAIN_MODULE)
    )
    owners = resolve([owner, ref])
    assert owners == {("default", "Account"): owner.owned["Account"]}

    # A reference in another account does not reach it: no owner there.
    other = load_function(
        function(
            tmp_path,
            "other",
            f'name = "other"\nmain = "app.py"\naccount = "b"\n{ACTOR}',
            PLAIN_MODULE,
        )
    )
    with pytest.raises(ManifestError, match="no function of account 'b' owns type Account"):
        resolve([owner, other])
    # Each account may own a type of the same name.
    mine = load_function(
        function(tmp_path, "mine", f'name = "mine"\nmain = "app.py"\naccount = "b"\n{ACTOR}')
    )
    assert set(resolve([owner, mine, other])) == {("default", "Account"), ("b", "Account")}

    twice = load_function(function(tmp_path, "twice", f'name = "twice"\nmain = "app.py"\n{ACTOR}'))
    with pytest.raises(ManifestError, match="also owned by"):
        resolve([owner, twice])
    same_name = load_function(function(tmp_path, "x", 'name = "owner"\nmain = "app.py"\n'))
    with pytest.raises(ManifestError, match="two functions named 'owner'"):
        resolve([owner, same_name])


def test_the_class_name_must_match_the_type(tmp_path: Path) -> None:
    module = OWNER_MODULE + "\nLedger = Account\n"
    toml = 'name = "s"\nmain = "app.py"\n[[actors]]\nbinding = "L"\ntype = "Ledger"\n'
    with pytest.raises(ManifestError, match="type Ledger names class Account"):
        resolve([load_function(function(tmp_path, "f", toml, module))])
