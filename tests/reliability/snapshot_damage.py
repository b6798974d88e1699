"""Damage to the snapshot at rest: a runtime's data directory with a few dozen instances
(values, alarms) is checkpointed into its snapshot (state.sqlite3), then, many times over, a
copy of it has its snapshot damaged at random (bits flipped, a run of bytes overwritten, a
whole page zeroed or overwritten, a bit of a meta row's name and one more anywhere) and is
opened and read back whole. Each time the outcome must be one of two: every instance reads
exactly as stored, or a LogCorruptionError (or an OSError) naming the snapshot, at start-up
or at the read that meets the damage, with the file left as it was. Never a wrong answer,
never another exception. And `fastactor actors check` (check_shard), run on the damaged
copy first, must agree: it reports damage naming the snapshot exactly when the runtime
refuses it.

    python tests/reliability/snapshot_damage.py --trials 2000 [--seed N]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from fastactor import Runtime, StatefulActor
from fastactor.errors import LogCorruptionError
from fastactor.inspect_data import check_shard

INSTANCES = 40
FAR = 4102444800000  # 2100-01-01: alarms set here never fire during a run
PAGE = 4096


class Box(StatefulActor):
    async def put(self, entries: dict[str, Any]) -> None:
        await self.ctx.storage.put(entries)

    async def arm(self, when: int) -> None:
        await self.ctx.storage.set_alarm(when)

    async def dump(self) -> tuple[dict[str, Any], int | None]:
        return await self.ctx.storage.list(limit=1000), await self.ctx.storage.get_alarm()


def stored(i: int) -> tuple[dict[str, Any], int | None]:
    """What instance i holds: a few keys of various sizes, and an alarm on every third."""
    kv = {f"k{j}": "v" * (i * 7 % 300) + str(j) for j in range(i % 5 + 1)}
    return kv, FAR + i if i % 3 == 0 else None


async def _build(data: Path) -> None:
    async with Runtime(data, [Box]) as rt:
        ns = rt.namespace("Box")
        for i in range(INSTANCES):
            kv, alarm = stored(i)
            await ns.id_from_name(f"b{i}").put(kv)
            if alarm is not None:
                await ns.id_from_name(f"b{i}").arm(alarm)
    # Closing checkpointed everything: the snapshot alone holds the state (the log's
    # records are all at or below its applied LSN, so none is replayed over it).


async def _read_back(data: Path) -> str | None:
    """None if every instance reads as stored, else what differs."""
    async with Runtime(data, [Box]) as rt:
        ns = rt.namespace("Box")
        for i in range(INSTANCES):
            got = await ns.id_from_name(f"b{i}").dump()
            if got != stored(i):
                return f"b{i} reads {got!r:.120}, not {stored(i)!r:.120}"
    return None


def damage(path: Path, rnd: random.Random) -> str:
    data = bytearray(path.read_bytes())
    how = rnd.choice(["bits", "run", "page", "meta"])
    if how == "meta":
        # A bit of a meta row's name (in the table or in its primary key's index, each of
        # which holds a copy; not the "SQLite format 3" of the file's header), and one more
        # anywhere.
        name = rnd.choice([b"format", b"applied_lsn"])
        found = [m.start() for m in re.finditer(name, data) if m.start() >= 100]
        assert found, name
        data[rnd.choice(found) + rnd.randrange(len(name))] ^= 1 << rnd.randrange(8)
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    elif how == "bits":
        for _ in range(rnd.randrange(1, 8)):
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    elif how == "run":
        at = rnd.randrange(len(data))
        n = min(rnd.randrange(1, 200), len(data) - at)
        data[at : at + n] = rnd.randbytes(n)
    else:
        page = rnd.randrange(len(data) // PAGE)
        fill = rnd.randbytes(PAGE) if rnd.random() < 0.5 else bytes(PAGE)
        data[page * PAGE : (page + 1) * PAGE] = fill
    path.write_bytes(bytes(data))
    return how


def run(work: Path, trials: int, seed: int) -> dict[str, int]:
    """Outcomes by kind: "read back" or "refused"; raises AssertionError on any other."""
    rnd = random.Random(seed)
    base, trial = work / "base", work / "trial"
    shutil.rmtree(work, ignore_errors=True)
    uvloop.run(_build(base))
    outcomes = {"read back": 0, "refused": 0}
    for t in range(trials):
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(base, trial)
        snapshot = trial / "state.sqlite3"
        how = damage(snapshot, rnd)
        damaged = snapshot.read_bytes()
        try:
            check_shard(trial)  # read-only: the runtime then opens the same bytes
            check_found = None
        except (LogCorruptionError, OSError) as e:
            check_found = e
        except Exception as e:
            raise AssertionError(f"seed {seed}, trial {t} ({how}): check: {e!r}") from e
        try:
            wrong = uvloop.run(_read_back(trial))
        except (LogCorruptionError, OSError) as e:
            if str(snapshot) not in str(e):
                raise AssertionError(
                    f"seed {seed}, trial {t} ({how}): {e!r} does not name the snapshot"
                ) from e
            if snapshot.read_bytes() != damaged:
                raise AssertionError(
                    f"seed {seed}, trial {t} ({how}): the runtime refused ({e}), but wrote "
                    f"into the damaged snapshot first"
                ) from e
            if check_found is None or str(snapshot) not in str(check_found):
                raise AssertionError(
                    f"seed {seed}, trial {t} ({how}): the runtime refused ({e}), check "
                    f"said {check_found!r}"
                ) from e
            outcomes["refused"] += 1
            continue
        except Exception as e:
            raise AssertionError(f"seed {seed}, trial {t} ({how}): {e!r}") from e
        if wrong is not None:
            raise AssertionError(f"seed {seed}, trial {t} ({how}): {wrong}")
        if check_found is not None:
            raise AssertionError(
                f"seed {seed}, trial {t} ({how}): read back whole, but check said {check_found!r}"
            )
        outcomes["read back"] += 1
    shutil.rmtree(work, ignore_errors=True)
    return outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    ap.add_argument("--work", default="build/snapshot-damage")
    args = ap.parse_args()
    began = time.perf_counter()
    got = run(Path(args.work), args.trials, args.seed)
    print(
        f"seed {args.seed}: {args.trials} damaged snapshots, {got['refused']} refused naming "
        f"the file, {got['read back']} read back whole, 0 wrong, in "
        f"{time.perf_counter() - began:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
