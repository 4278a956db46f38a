import sys, numpy as np, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUN, text_embeddings_file  # noqa: E402,F401
from distilrec.artifacts import load_artifact
from distilrec.data import Split, load_dataset
from distilrec.metrics import model_score_fn
from distilrec.metrics import rank_of_targets
from distilrec.baselines import EASE
torch.set_num_threads(2)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
art = load_artifact(str(RUN), with_teacher=True)
fn = model_score_fn(art.teacher)
def ranks(score_fn, H, Y, T=None):
    out = []
    for s in range(0, len(H), 256):
        h = H[s:s+256]
        sc = score_fn(h) if T is None else score_fn(h, T[s:s+256])
        out.append(rank_of_targets(sc, h, Y[s:s+256]))
    return np.concatenate(out)
nd = lambda r: np.where(r < 10, 1/np.log2(r+2), 0.0)
res = {}
import json
out = {}
for stage in ("val", "test"):
    H, T, Y = split.histories(stage), split.history_times(stage), split.targets(stage)
    ease = EASE.fit(split.train if stage == "val" else H, ds.n_items, 50.0)
    res[stage] = dict(teacher=nd(ranks(fn, H, Y, T)), ease=nd(ranks(ease.score, H, Y)))
ts = split.times
gap_test = np.array([t[-1]-t[-2] for t in ts]); gap_val = np.array([t[-2]-t[-3] for t in ts])
ids = np.array([int(i) for i in ds.item_ids])
def cat(g):
    return np.select([g == 0, g < 3600, g < 86400*30], ["0 tie", "<1h", "<30d"], ">30d")
for stage, g in (("val", gap_val), ("test", gap_test)):
    c = cat(g)
    print(stage, "all", len(c), {k: round(v.mean(), 4) for k, v in res[stage].items()})
    for k in ["0 tie", "<1h", "<30d", ">30d"]:
        m = c == k
        print(f"  {k:6s} n={m.sum():3d}", {kk: round(v[m].mean(), 4) for kk, v in res[stage].items()})
        out.setdefault(stage, {})[k] = {"users": int(m.sum()), **{kk: round(float(v[m].mean()), 4) for kk, v in res[stage].items()}}
    out[stage]["all"] = {"users": len(c), **{kk: round(float(v.mean()), 4) for kk, v in res[stage].items()}}
# tie order: is target movieId > previous item's id when tied
seqs = ds.sequences
for stage, pos in (("val", -2), ("test", -1)):
    tied = [(ids[s[pos]] > ids[s[pos-1]]) for s, t in zip(seqs, ts) if t[pos] == t[pos-1]]
    print(stage, "tied", len(tied), "ascending id", np.mean(tied))
    out[stage]["tied_target_has_larger_movieId"] = f"{sum(tied)} of {len(tied)}"
json.dump(out, open(OUT / "gap.json", "w"), indent=1)
np.savez(OUT / "gap.npz", **{f"{s}_{k}": v for s in res for k, v in res[s].items()}, gap_val=gap_val, gap_test=gap_test)
