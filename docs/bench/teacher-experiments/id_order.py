"""How often a target 1 s to 1 h after the previous item has the larger movie id (train pairs, validation, test)."""
import sys, numpy as np
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET  # noqa: E402
from distilrec.data import load_dataset
ds = load_dataset(DATASET)
ids = np.array([int(i) for i in ds.item_ids])
for name, pos in (("train (all earlier pairs)", None), ("val", -2), ("test", -1)):
    up, n = 0, 0
    for s, t in zip(ds.sequences, ds.timestamps):
        if pos is None:
            g = t[1:-2] - t[:-3]; m = (g > 0) & (g < 3600); up += int((ids[s[1:-2]] > ids[s[:-3]])[m].sum()); n += int(m.sum())
        else:
            g = t[pos] - t[pos - 1]
            if 0 < g < 3600: up += int(ids[s[pos]] > ids[s[pos - 1]]); n += 1
    print(f"{name}: target 1 s to 1 h after the previous item: {n}, larger movie id than the previous: {up / n:.3f}")
