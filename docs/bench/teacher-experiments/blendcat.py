import sys, numpy as np, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUN, text_embeddings_file  # noqa: E402,F401
from distilrec.artifacts import load_artifact
from distilrec.data import Split, load_dataset
from distilrec.metrics import model_score_fn, rank_of_targets
from distilrec.baselines import EASE
torch.set_num_threads(2)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
art = load_artifact(str(RUN), with_teacher=True)
fn = model_score_fn(art.teacher)
import json
out = {}
nd = lambda r: np.where(r < 10, 1/np.log2(r+2), 0.0)
for stage in ("val", "test"):
    H, T, Y = split.histories(stage), split.history_times(stage), split.targets(stage)
    ease = EASE.fit(split.train if stage == "val" else H, ds.n_items, 50.0)
    rt, re, rb = [], [], []
    for s in range(0, len(H), 256):
        h = H[s:s+256]; t = torch.from_numpy(fn(h, T[s:s+256])); e = torch.from_numpy(ease.score(h)).float()
        y = Y[s:s+256]
        rt.append(rank_of_targets(t.numpy(), h, y)); re.append(rank_of_targets(e.numpy(), h, y))
        rb.append(rank_of_targets((torch.log_softmax(t, -1) + 5 * e).numpy(), h, y))
    rt, re, rb = map(np.concatenate, (rt, re, rb))
    L = np.array([len(h) for h in H])
    for name, m in (("all", L > 0), ("<=50", L <= 50), ("51-200", (L > 50) & (L <= 200)), (">200", L > 200)):
        out.setdefault(stage, {})[name] = {"users": int(m.sum()), "teacher": round(float(nd(rt)[m].mean()), 4), "ease": round(float(nd(re)[m].mean()), 4), "teacher_plus_5_ease": round(float(nd(rb)[m].mean()), 4)}
        print(stage, f"{name:7s} n={m.sum():3d} teacher {nd(rt)[m].mean():.4f} ease {nd(re)[m].mean():.4f} blend {nd(rb)[m].mean():.4f}")

json.dump(out, open(OUT / "blendcat.json", "w"), indent=1)
