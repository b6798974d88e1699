"""Differential test: random storage programs against a plain-Python model of SPEC §3, with
checkpoints, clean restarts and simulated crashes mixed in (hypothesis state machine)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from typing import Any

import uvloop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastactor import ActorOutputGateError, Runtime, StatefulActor
from fastactor.testing import crash

KEYS = st.sampled_from(["a", "ab", "abc", "b", "ba", "bé", "c", "z\U0001f600"])
NAMES = st.sampled_from(["x", "y", "z"])
VALUES = st.one_of(
    st.integers(-5, 5),
    st.text(max_size=3),
    st.tuples(st.integers(0, 3)),
    st.frozensets(st.integers(0, 3), max_size=2),
)
WRITE = st.one_of(
    st.tuples(st.just("put"), KEYS, VALUES),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("delete_all")),
)


class Script(StatefulActor):
    async def run(self, ops: list[Any], fail_txn: bool) -> list[Any]:
        s = self.ctx.storage
        out: list[Any] = []

        async def apply(target: Any, op: tuple[Any, ...]) -> None:
            if op[0] == "put":
                out.append(await target.put(op[1], op[2]))
            elif op[0] == "delete":
                out.append(await target.delete(op[1]))
            elif op[0] == "delete_all":
                out.append(await s.delete_all())
            elif op[0] == "get":
                out.append(await target.get(op[1]))
            else:
                out.append(await target.list(**op[1]))

        for op in ops:
            if op[0] == "txn":
                try:
                    async with s.transaction() as txn:
                        for inner in op[1]:
                            await apply(txn, inner)
                        if fail_txn:
                            raise RuntimeError("abort")
                except RuntimeError:
                    pass
            else:
                await apply(s, op)
        return out


def model_list(d: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    keys = sorted(d)
    if opts.get("prefix"):
        keys = [k for k in keys if k.startswith(opts["prefix"])]
    if opts.get("start") is not None:
        keys = [k for k in keys if k >= opts["start"]]
    if opts.get("start_after") is not None:
        keys = [k for k in keys if k > opts["start_after"]]
    if opts.get("end") is not None:
        keys = [k for k in keys if k < opts["end"]]
    if opts.get("reverse"):
        keys.reverse()
    return {k: d[k] for k in keys[: opts.get("limit", 128)]}


LIST_OPTS = st.fixed_dictionaries(
    {},
    optional={
        "prefix": st.sampled_from(["a", "b", "ab", "z"]),
        "start": KEYS,
        "end": KEYS,
        "reverse": st.booleans(),
        "limit": st.integers(1, 6),
    },
) | st.fixed_dictionaries({"start_after": KEYS, "limit": st.integers(1, 6)})
READ = st.tuples(st.just("get"), KEYS) | st.tuples(st.just("list"), LIST_OPTS)
TXN = st.tuples(
    st.just("txn"),
    st.lists(
        st.one_of(WRITE.filter(lambda o: o[0] != "delete_all"), READ), min_size=1, max_size=4
    ),
)


class StorageModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="fastactor-model-")
        self.loop = uvloop.new_event_loop()
        self.model: dict[str, dict[str, Any]] = {"x": {}, "y": {}, "z": {}}
        self.rt = self._open()

    def _open(self) -> Runtime:
        rt = Runtime(self.dir, [Script], idle_timeout=0.05)
        self.loop.run_until_complete(rt.start())
        return rt

    def _call(self, name: str, ops: list[Any], fail_txn: bool = False) -> Any:
        stub = self.rt.namespace("Script").id_from_name(name)
        return self.loop.run_until_complete(stub.run(ops, fail_txn))

    def _expect(self, d: dict[str, Any], ops: list[Any], fail_txn: bool) -> tuple[Any, Any]:
        out: list[Any] = []

        def apply(target: dict[str, Any], op: tuple[Any, ...]) -> None:
            if op[0] == "put":
                target[op[1]] = op[2]
                out.append(None)
            elif op[0] == "delete":
                out.append(target.pop(op[1], _GONE) is not _GONE)
            elif op[0] == "delete_all":
                target.clear()
                out.append(None)
            elif op[0] == "get":
                out.append(target.get(op[1]))
            else:
                out.append(model_list(target, op[1]))

        new = dict(d)
        for op in ops:
            if op[0] == "txn":
                scratch = dict(new)
                for inner in op[1]:
                    apply(scratch, inner)
                if not fail_txn:
                    new = scratch
            else:
                apply(new, op)
        return out, new

    @rule(
        name=NAMES,
        ops=st.lists(st.one_of(WRITE, READ, TXN), min_size=1, max_size=6),
        fail_txn=st.booleans(),
    )
    def turn(self, name: str, ops: list[Any], fail_txn: bool) -> None:
        expected_out, expected_state = self._expect(self.model[name], ops, fail_txn)
        poisoned = fail_txn and any(op[0] == "txn" for op in ops)
        try:
            got = self._call(name, ops, fail_txn)
        except ActorOutputGateError:
            assert poisoned
        else:
            assert not poisoned
            assert got == expected_out
        self.model[name] = expected_state

    @rule(name=NAMES)
    def read_all(self, name: str) -> None:
        got = self._call(name, [("list", {"limit": 1000})])
        assert got == [model_list(self.model[name], {})]

    @rule()
    def checkpoint(self) -> None:
        self.loop.run_until_complete(self.rt.checkpoint())

    @rule()
    def restart(self) -> None:
        self.loop.run_until_complete(self.rt.close())
        self.rt = self._open()

    @rule()
    def crash_and_recover(self) -> None:
        crash(self.rt)  # every turn above was acknowledged, so nothing may be lost
        self.rt = self._open()

    @precondition(lambda self: True)
    @rule()
    def idle(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0.08))  # lets instances be evicted

    @invariant()
    def replies_are_durable(self) -> None:
        wal = self.rt.shard.wal
        assert wal.durable_lsn == wal.last_lsn

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.rt.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


_GONE = object()

TestStorageModel = StorageModel.TestCase
TestStorageModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
