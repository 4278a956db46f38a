"""Every combination of K of the teachers of RUNS, their scores averaged (K = 1 to len(RUNS))."""
import sys, itertools, numpy as np, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUNS  # noqa: E402,F401
from distilrec.artifacts import load_artifact
from distilrec.data import Split, load_dataset
from distilrec.metrics import model_score_fn, ndcg_hr, rank_of_targets
torch.set_num_threads(2)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
nd = lambda r: ndcg_hr(r)[0]  # NDCG@10 of the ranks
S = {}
for run in RUNS:
    fn = model_score_fn(load_artifact(str(run / "models"), with_teacher=True).teacher)
    for st in ("val", "test"):
        H, T = split.histories(st), split.history_times(st)
        S[run, st] = np.concatenate([fn(H[s:s+128], T[s:s+128]) for s in range(0, len(H), 128)])
for k in range(1, len(RUNS) + 1):
    vs, ts = [], []
    for c in itertools.combinations(RUNS, k):
        r = {st: nd(rank_of_targets(sum(S[x, st] for x in c) / k, split.histories(st), split.targets(st))) for st in ("val", "test")}
        vs.append(r["val"]); ts.append(r["test"])
    ts = np.array(ts)
    print(f"K={k} n={len(ts)} val mean {np.mean(vs):.4f} test mean {ts.mean():.4f} ({ts.mean()/0.0411:.3f}x) min {ts.min():.4f} ({ts.min()/0.0411:.2f}x) share>=0.0617 {(ts>=0.0617).mean():.2f}", flush=True)
