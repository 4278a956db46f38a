"""Snapshot ensembles of one training run: the epochs' weights that teach.py --save_all kept.

For K = 1 .. 8: the scores of the K checkpoints with the best validation averaged ("top-K"), the K
epochs ending at the best one averaged ("last-K"), and the top-K checkpoints' weights averaged into
one model ("soup-K"). K is to be chosen on validation; test is printed beside it."""
import argparse, json, sys, numpy as np, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, text_embeddings_file  # noqa: E402
from distilrec.artifacts import model_from_bytes
from distilrec.data import Split, load_dataset
from distilrec.metrics import model_score_fn, ndcg_hr, rank_of_targets

p = argparse.ArgumentParser(); p.add_argument("--tag", required=True); p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
emb = np.load(text_embeddings_file())
d = OUT / "models" / a.tag
model = model_from_bytes((d / "config.json").read_bytes(), (d / "model.safetensors").read_bytes(), emb)
files = sorted((d / "epochs").glob("*.pt"))
def scores(m):
    fn = model_score_fn(m); out = {}
    for st in ("val", "test"):
        H, T = split.histories(st), split.history_times(st)
        out[st] = np.concatenate([fn(H[s:s + 128], T[s:s + 128]) for s in range(0, len(H), 128)])
    return out
nd = {st: (lambda s, st=st: ndcg_hr(rank_of_targets(s, split.histories(st), split.targets(st)))[0]) for st in ("val", "test")}
S, states = [], []
for f in files:
    sd = torch.load(f); states.append(sd); model.load_state_dict(sd); S.append(scores(model))
val = np.array([nd["val"](s["val"]) for s in S]); order = np.argsort(-val, kind="stable"); best = int(order[0])
rows = []
for k in range(1, 9):
    top = order[:k]; last = range(max(0, best - k + 1), best + 1)
    soup = {n: sum(states[i][n].float() for i in top) / k if states[0][n].dtype.is_floating_point else states[best][n]
            for n in states[0]}
    model.load_state_dict(soup); ss = scores(model)
    row = {"k": k}
    for name, sc in (("top", {st: sum(S[i][st] for i in top) / k for st in S[0]}),
                     ("last", {st: sum(S[i][st] for i in last) / len(last) for st in S[0]}), ("soup", ss)):
        row[name] = {st: round(float(nd[st](sc[st])), 4) for st in ("val", "test")}
    rows.append(row); print(json.dumps(row), flush=True)
print(json.dumps({"tag": a.tag, "best_epoch": best, "epochs": len(files), "rows": rows}), flush=True)
