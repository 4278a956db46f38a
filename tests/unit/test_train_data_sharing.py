"""training/loop.py hands the log to Ray Train's workers through the object store: sequences packed into
one flat array each, read back as views (no per-worker copy of 20M interactions)."""

from __future__ import annotations

import numpy as np


def test_packed_sequences_come_back_as_views_of_one_array():
    from training.loop import pack, unpack

    seqs = [np.array([3, 1, 4]), np.array([], dtype=np.int64), np.array([1, 5])]
    flat, offsets = pack(seqs)
    assert flat.tolist() == [3, 1, 4, 1, 5] and offsets.tolist() == [0, 3, 3, 5]
    back = unpack((flat, offsets))
    assert [b.tolist() for b in back] == [s.tolist() for s in seqs]
    assert all(b.base is flat for b in back)
    assert pack(None) is None and unpack(None) is None
    assert unpack(pack([])) == []
