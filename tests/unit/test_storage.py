"""ctx.storage, every row of SPEC §3 (alarms aside): get/put/delete/list, delete_all,
transactions, limits, reserved keys, read-your-writes, laziness, copies."""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from fastactor import (
    ActorMethodError,
    ActorOutputGateError,
    CodecError,
    LogCorruptionError,
    Runtime,
    StatefulActor,
    StorageLimitError,
)
from fastactor._core import SNAPSHOT_WAL_LIMIT
from fastactor.testing import RuntimeFactory


class Box(StatefulActor):
    """Runs whatever storage script the test sends, as one turn."""

    async def do(self, ops: list[tuple[Any, ...]]) -> list[Any]:
        out = []
        s = self.ctx.storage
        for op, *args in ops:
            if op == "list":
                out.append(await s.list(**args[0]))
            else:
                out.append(await getattr(s, op)(*args))
        return out

    async def put_then_fail(self, key: str) -> None:
        await self.ctx.storage.put(key, "never")
        raise RuntimeError("boom")

    async def tx_fail_caught(self) -> str:
        s = self.ctx.storage
        await s.put("before", 1)
        try:
            async with s.transaction() as txn:
                await txn.put("inside", 1)
                assert await txn.get("inside") == 1
                raise ValueError("rollback")
        except ValueError:
            pass
        await s.put("after", 1)
        return "caught"

    async def tx_fn(self) -> Any:
        async def body(txn: Any) -> Any:
            await txn.put("a", 1)
            await txn.put("b", 2)
            await txn.delete("a")
            return await txn.list()

        return await self.ctx.storage.transaction(body)

    async def tx_many(self) -> Any:
        async with self.ctx.storage.transaction() as txn:
            await txn.put({"t1": 1, "t2": 2, "t3": 3})
            assert await txn.delete(["t3", "t4"]) == 1
            return await txn.get(["t1", "t2", "t3"])

    async def tx_rollback(self, how: str) -> Any:
        """Writes in a transaction and rolls it back, in a block or a function (HOW); then
        tries one more write in it."""
        s = self.ctx.storage
        await s.put("rb-before", 1)
        late = None

        async def body(txn: Any) -> str:
            nonlocal late
            await txn.put("rb-inside", 1)
            await txn.delete("rb-before")
            txn.rollback()
            try:
                await txn.put("rb-late", 1)
            except RuntimeError as e:
                late = str(e)
            return "rolled back"

        if how == "block":
            async with s.transaction() as txn:
                r = await body(txn)
        else:
            r = await s.transaction(body)
        await s.put("rb-after", 1)
        return [r, late]

    async def tx_fn_fail(self) -> None:
        async def body(txn: Any) -> None:
            await txn.put("t", 1)
            raise KeyError("x")

        await self.ctx.storage.transaction(body)

    async def mutate_after_put(self) -> Any:
        v = {"list": [1]}
        await self.ctx.storage.put("v", v)
        v["list"].append(2)
        got = await self.ctx.storage.get("v")
        got["list"].append(3)
        return await self.ctx.storage.get("v")

    async def bad(self, what: str) -> None:
        s = self.ctx.storage
        await s.put("ok", 1)
        try:
            if what == "value":
                await s.put("k", object())
            elif what == "big":
                await s.put("k", b"x" * (2 * 1024 * 1024))
            elif what == "longkey":
                await s.put("é" * 1025, 1)
            elif what == "reserved":
                await s.put("__fastactor_alarm", 1)
            elif what == "empty":
                await s.get("")
            elif what == "type":
                await s.put(1, 1)
            elif what == "limit":
                await s.list(limit=1001)
            elif what == "both":
                await s.list(start="a", start_after="b")
            elif what == "surrogate":  # a key no file can hold
                await s.put("k\udcff", 1)
            elif what == "surrogate value":
                await s.put("k", ["\udcff"])
            elif what == "many values":  # one bad value: none of the entries is stored
                await s.put({"a": 1, "b": object(), "c": 3})
            elif what == "many keys":
                await s.put({"a": 1, "__fastactor_x": 2})
            elif what == "too many":
                await s.put({f"k{i}": i for i in range(129)})
            elif what == "too many gets":
                await s.get([f"k{i}" for i in range(129)])
            elif what == "no value":
                await s.put("k")
            elif what == "batch key type":
                await s.delete(["a", 2])
        finally:
            await s.delete("ok")


def run(factory: RuntimeFactory, fn: Callable[[Runtime], Awaitable[Any]], **opts: Any) -> Any:
    async def go() -> Any:
        async with factory(Box, **opts) as rt:
            return await fn(rt)

    return uvloop.run(go())


def box(rt: Runtime, name: str = "b") -> Any:
    return rt.namespace("Box").id_from_name(name)


def test_get_put_delete(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        b = box(rt)
        assert await b.do(
            [
                ("get", "k"),
                ("get", "k", 7),
                ("put", "k", [1, "x"]),
                ("get", "k"),
                ("delete", "k"),
                ("delete", "k"),
                ("get", "k"),
            ]
        ) == [None, 7, None, [1, "x"], True, False, None]
        await b.do([("put", "k", (1, 2))])
        assert await b.do([("get", "k")]) == [(1, 2)]
        assert await box(rt, "other").do([("get", "k")]) == [None]

    run(actor_runtime, go)


def test_many_keys_at_once(actor_runtime: RuntimeFactory) -> None:
    """Durable Objects' batch forms: get(keys), put(entries), delete(keys), in one turn and
    in a transaction, up to 128 keys."""

    async def go(rt: Runtime) -> None:
        b = box(rt)
        entries = {f"k{i:03}": i for i in range(128)}
        assert await b.do([("put", entries), ("put", {"z": [1]})]) == [None, None]
        # Only the keys that exist, in key order whatever the order asked; a tuple works too.
        assert await b.do([("get", ["z", "nope", "k001", "k000", "k001"])]) == [
            {"k000": 0, "k001": 1, "z": [1]}
        ]
        assert await b.do([("get", ("k127",)), ("get", [])]) == [{"k127": 127}, {}]
        assert await b.do([("get", list(entries))]) == [entries]
        # delete(keys): how many existed; read-your-writes inside the turn.
        assert await b.do(
            [("delete", ["k000", "k001", "nope", "k001"]), ("get", ["k000", "k002"])]
        ) == [2, {"k002": 2}]
        assert await b.do([("delete", ["k000"]), ("get", "k001", "gone")]) == [0, "gone"]
        # Values are copies, as with put(key, value).
        assert await b.do([("get", ["z"])]) == [{"z": [1]}]
        assert await b.tx_many() == {"t1": 1, "t2": 2}
        assert await b.do([("get", ["t1", "t2", "t3"])]) == [{"t1": 1, "t2": 2}]
        assert len((await b.do([("list", {"prefix": "k", "limit": 1000})]))[0]) == 126

    run(actor_runtime, go)


def test_list_options(actor_runtime: RuntimeFactory) -> None:
    keys = ["a", "ab", "abc", "b", "ba", "c", "é", "\U0001f600"]

    async def go(rt: Runtime) -> None:
        b = box(rt)
        await b.do([("put", k, i) for i, k in enumerate(keys)])

        async def lst(**kw: Any) -> list[str]:
            return list((await b.do([("list", kw)]))[0])

        assert await lst() == sorted(keys)  # code point order
        assert await lst(prefix="ab") == ["ab", "abc"]
        assert await lst(start="ab") == ["ab", "abc", "b", "ba", "c", "é", "\U0001f600"]
        assert await lst(start_after="ab") == ["abc", "b", "ba", "c", "é", "\U0001f600"]
        assert await lst(end="b") == ["a", "ab", "abc"]
        assert await lst(start="ab", end="ba") == ["ab", "abc", "b"]
        assert await lst(reverse=True, limit=3) == ["\U0001f600", "é", "c"]
        assert await lst(prefix="a", reverse=True) == ["abc", "ab", "a"]
        assert await lst(limit=2) == ["a", "ab"]
        assert (await b.do([("list", {"prefix": "b"})]))[0] == {"b": 3, "ba": 4}

    run(actor_runtime, go)


def test_list_merges_snapshot_overlay_and_the_turn(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        b = box(rt)
        await b.do([("put", f"k{i:02}", i) for i in range(20)])
        await rt.checkpoint()  # k00..k19 now in the snapshot
        await b.do([("delete", "k03"), ("put", "k05", "new"), ("put", "k20", 20)])
        got = await b.do([("delete", "k04"), ("put", "k00x", "t"), ("list", {"limit": 6})])
        assert got[2] == {"k00": 0, "k00x": "t", "k01": 1, "k02": 2, "k05": "new", "k06": 6}
        got = await b.do([("list", {"start": "k18"})])
        assert list(got[0]) == ["k18", "k19", "k20"]

    run(actor_runtime, go)


def test_the_snapshots_own_wal_file_is_cut_back_after_a_large_checkpoint(
    actor_runtime: RuntimeFactory,
) -> None:
    # SQLite's WAL file grows to hold a checkpoint's transaction. Left at that size while the
    # runtime runs, one large checkpoint would keep its size on disk for good.
    wal = actor_runtime.data_dir / "state.sqlite3-wal"

    async def go(rt: Runtime) -> None:
        value = "v" * 4096
        for n in range(0, 2400, 400):
            await asyncio.gather(
                *(box(rt, f"b{i}").do([("put", "k", value)]) for i in range(n, n + 400))
            )
        await rt.checkpoint()  # about 10 MB of rows in one transaction
        assert wal.stat().st_size > 2 * SNAPSHOT_WAL_LIMIT
        await box(rt).do([("put", "small", 1)])
        await rt.checkpoint()  # a small one starts the file over and cuts it
        assert 0 < wal.stat().st_size <= SNAPSHOT_WAL_LIMIT
        assert await box(rt, "b2399").do([("get", "k")]) == [value]

    run(actor_runtime, go)


def test_list_limit_bounds(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        b = box(rt)
        await b.do([("put", f"{i:04}", i) for i in range(1200)])
        assert len((await b.do([("list", {"limit": 1000})]))[0]) == 1000
        assert len((await b.do([("list", {})]))[0]) == 128
        with pytest.raises(ActorMethodError) as ei:
            await b.do([("list", {"limit": 1001})])
        assert ei.value.remote_type == "ValueError"

    run(actor_runtime, go)


def test_delete_all(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        b = box(rt)
        await b.do([("put", "a", 1), ("put", "b", 2)])
        await rt.checkpoint()
        await b.do([("put", "c", 3)])
        assert await b.do([("delete_all",), ("get", "a"), ("list", {}), ("put", "d", 4)]) == [
            None,
            None,
            {},
            None,
        ]
        assert await b.do([("list", {})]) == [{"d": 4}]
        await rt.checkpoint()
        assert await b.do([("list", {}), ("get", "a")]) == [{"d": 4}, None]

    run(actor_runtime, go)


def test_a_raising_turn_commits_nothing(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        b = box(rt)
        with pytest.raises(ActorMethodError) as ei:
            await b.put_then_fail("k")
        assert ei.value.remote_type == "RuntimeError" and "boom" in str(ei.value)
        assert await b.do([("get", "k")]) == [None]

    run(actor_runtime, go)


def test_transactions(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        b = box(rt)
        assert await b.tx_fn() == {"b": 2}
        assert await b.do([("get", "a"), ("get", "b")]) == [None, 2]
        # A transaction that raised poisons the reply even though the method caught it;
        # writes before and after it still commit, its own writes do not.
        with pytest.raises(ActorOutputGateError):
            await b.tx_fail_caught()
        assert await b.do([("get", "before"), ("get", "inside"), ("get", "after")]) == [1, None, 1]
        with pytest.raises(ActorMethodError) as ei:
            await b.tx_fn_fail()
        assert ei.value.remote_type == "KeyError"
        assert await b.do([("get", "t")]) == [None]
        # A rollback discards the transaction's writes without an error: the reply is the
        # method's, and the writes around the transaction commit.
        for how in ("block", "fn"):
            assert await b.tx_rollback(how) == ["rolled back", "the transaction was rolled back"]
            got = await b.do(
                [("get", k) for k in ("rb-before", "rb-inside", "rb-late", "rb-after")]
            )
            assert got == [1, None, None, 1]
            await b.do([("delete", "rb-after")])

    run(actor_runtime, go)


def test_values_are_copied_in_and_out(actor_runtime: RuntimeFactory) -> None:
    async def go(rt: Runtime) -> None:
        assert await box(rt).mutate_after_put() == {"list": [1]}

    run(actor_runtime, go)


@pytest.mark.parametrize(
    ("what", "remote_type"),
    [
        ("value", "CodecError"),
        ("big", "StorageLimitError"),
        ("longkey", "StorageLimitError"),
        ("reserved", "ValueError"),
        ("empty", "ValueError"),
        ("type", "TypeError"),
        ("limit", "ValueError"),
        ("both", "ValueError"),
        ("surrogate", "ValueError"),
        ("surrogate value", "CodecError"),
        ("many values", "CodecError"),
        ("many keys", "ValueError"),
        ("too many", "ValueError"),
        ("too many gets", "ValueError"),
        ("no value", "TypeError"),
        ("batch key type", "TypeError"),
    ],
)
def test_bad_input_is_a_clear_error_and_stores_nothing(
    actor_runtime: RuntimeFactory, what: str, remote_type: str
) -> None:
    async def go(rt: Runtime) -> None:
        b = box(rt)
        with pytest.raises(ActorMethodError) as ei:
            await b.bad(what)
        assert ei.value.remote_type == remote_type
        kinds = {"CodecError": CodecError, "StorageLimitError": StorageLimitError}
        assert isinstance(ei.value, kinds.get(remote_type) or getattr(builtins, remote_type))
        assert await b.do([("list", {})]) == [{}]  # the turn committed nothing
        assert await b.do([("put", "still", "serving")]) == [None]

    run(actor_runtime, go)


def test_error_classes_are_the_documented_ones() -> None:
    assert issubclass(StorageLimitError, ValueError)
    assert issubclass(CodecError, TypeError)


def _flip_a_bit(snapshot: Any, key: str) -> None:
    """Changes one bit of KEY's stored value in the snapshot file, as a bad disk would."""
    db = sqlite3.connect(snapshot, isolation_level=None)
    (value,) = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    db.execute("UPDATE kv SET value = ? WHERE key = ?", (bytes([value[0] ^ 1]) + value[1:], key))
    db.close()


def test_a_damaged_snapshot_value_is_an_error_never_a_different_value(
    actor_runtime: RuntimeFactory,
) -> None:
    async def seed(rt: Runtime) -> None:
        await box(rt).do([("put", "balance", 140), ("put", "other", "kept")])
        await box(rt).do([("set_alarm", 4102444800000)])

    run(actor_runtime, seed)  # closing checkpoints both into the snapshot
    snapshot = actor_runtime.data_dir / "state.sqlite3"
    _flip_a_bit(snapshot, "balance")  # 140 would read as 141 without a checksum
    # Start-up reads every row once (SPEC 8: corruption stops start-up), naming the file,
    # the instance and the key. Before, it started, and only a read of that key failed.
    for _ in range(2):  # the failed start left nothing open: the second fails the same way
        with pytest.raises(LogCorruptionError, match="state.sqlite3.*'balance' of Box 'b'"):
            run(actor_runtime, lambda rt: box(rt).do([]))
    db = sqlite3.connect(snapshot, isolation_level=None)  # mended by hand: the row removed
    db.execute("DELETE FROM kv WHERE key = 'balance'")
    db.close()

    async def read(rt: Runtime) -> None:
        b = box(rt)
        assert await b.do([("get", "other")]) == ["kept"]  # the rest reads as stored
        assert await b.do([("put", "balance", 7), ("get", "balance")]) == [None, 7]

    run(actor_runtime, read)
    assert run(actor_runtime, lambda rt: box(rt).do([("get", "balance")])) == [7]

    # A damaged alarm stops start-up, naming the file (alarms are read when the shard opens).
    _flip_a_bit(snapshot, "__fastactor_alarm")
    for _ in range(2):  # the failed start left nothing open: the second fails the same way
        with pytest.raises(LogCorruptionError, match="state.sqlite3.*__fastactor_alarm"):
            run(actor_runtime, lambda rt: box(rt).do([]))
    # Mended (the alarm removed by hand), the directory opens again in this process.
    db = sqlite3.connect(snapshot, isolation_level=None)
    db.execute("DELETE FROM kv WHERE key = '__fastactor_alarm'")
    db.close()
    assert run(actor_runtime, lambda rt: box(rt).do([("get", "balance")])) == [7]


@pytest.mark.parametrize(
    ("damage", "inst", "named"),
    [
        # A row moved to another instance (a name changed, the order kept) or to another
        # key: its checksum covers both names, and it is found even where nothing reads it.
        (
            "UPDATE kv SET inst = inst || 'z' WHERE inst = ? AND key = 'k2'",
            "é",
            "'k2' of Box 'éz'",
        ),
        ("UPDATE kv SET key = 'k1x' WHERE inst = ? AND key = 'k1'", "é", "'k1x' of Box 'é'"),
        ("UPDATE kv SET value = x'0102' WHERE inst = ? AND key = 'k0'", "😀", "'k0' of Box '😀'"),
        ("UPDATE kv SET value = CAST(value AS TEXT) WHERE inst = ? AND key = 'k1'", "a", ""),
        ("UPDATE kv SET key = CAST(key AS BLOB) WHERE inst = ? AND key = 'k2'", "😀", "a row"),
        # Two values of one instance swapped: each is whole, under the other's name.
        (
            "UPDATE kv SET value = (SELECT value FROM kv AS o WHERE o.inst = kv.inst AND "
            "o.key = CASE kv.key WHEN 'k0' THEN 'k1' ELSE 'k0' END) "
            "WHERE inst = ? AND key IN ('k0', 'k1')",
            "a",
            "of Box 'a'",
        ),
    ],
)
def test_start_up_checks_every_row_of_the_snapshot(
    actor_runtime: RuntimeFactory, damage: str, inst: str, named: str
) -> None:
    async def seed(rt: Runtime) -> None:
        for name in ("a", "é", "😀", "zz"):
            await box(rt, name).do([("put", f"k{i}", f"{name}{i}" * 3) for i in range(3)])

    run(actor_runtime, seed)
    snapshot = actor_runtime.data_dir / "state.sqlite3"
    db = sqlite3.connect(snapshot, isolation_level=None)
    assert db.execute(damage, (f"Box\0{inst}",)).rowcount >= 1
    db.close()
    with pytest.raises(LogCorruptionError, match="state.sqlite3") as ei:
        run(actor_runtime, lambda rt: box(rt, "zz").do([("get", "k0")]))  # reads no damage
    assert named in str(ei.value)


def test_a_snapshot_of_the_first_format_is_sealed_when_opened(
    actor_runtime: RuntimeFactory,
) -> None:
    run(actor_runtime, lambda rt: box(rt).do([("put", "a", [1, "x"]), ("put", "b", None)]))
    snapshot = actor_runtime.data_dir / "state.sqlite3"
    db = sqlite3.connect(snapshot, isolation_level=None)  # back to format 1: bare values
    db.execute("UPDATE kv SET value = substr(value, 1, length(value) - 4)")
    db.execute("DELETE FROM meta WHERE k = 'format'")
    db.close()
    assert run(actor_runtime, lambda rt: box(rt).do([("list", {})])) == [
        {"a": [1, "x"], "b": None}
    ]
    db = sqlite3.connect(snapshot)
    assert db.execute("SELECT v FROM meta WHERE k = 'format'").fetchone() == (2,)
    db.close()
    _flip_a_bit(snapshot, "a")  # sealed now: a flipped bit is caught, at start-up
    with pytest.raises(LogCorruptionError, match="'a' of Box 'b' is damaged"):
        run(actor_runtime, lambda rt: box(rt).do([("get", "a")]))
