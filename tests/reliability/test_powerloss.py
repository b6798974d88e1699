"""A few hundred simulated power losses per run (tests/reliability/powerloss.py runs
thousands): acknowledged turns survive, others are all-or-nothing, in order."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from powerloss import simulate  # noqa: E402


def test_power_losses_keep_every_acknowledged_turn(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    st = simulate(tmp_path / "data", 300, seed)
    assert st.crashes == 300, seed
    # The simulation did cut into unsynced writes, and did see turns on both sides.
    assert st.mangled.get("cut", 0) + st.mangled.get("sectors", 0) > 50, (seed, st)
    assert st.acked > 1000 and st.turns - st.acked > 1000, (seed, st)
