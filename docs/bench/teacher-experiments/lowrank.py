"""Teacher + β · EASE with EASE's matrix cut to rank r (its truncated SVD), which a dot product of a
user vector and item vectors could serve; r = 0 is the full matrix. The teachers of RUNS; EASE
(λ = 50) fitted on train for validation and on train + validation for the test."""
import sys, numpy as np, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUNS  # noqa: E402,F401
from distilrec.artifacts import load_artifact
from distilrec.data import Split, load_dataset
from distilrec.metrics import model_score_fn, ndcg_hr, rank_of_targets
from distilrec.baselines import EASE, interaction_matrix
torch.set_num_threads(2)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
nd = lambda r: ndcg_hr(r)[0]  # NDCG@10 of the ranks
ranks = [0, 32, 64, 128, 256]; betas = [1, 2, 5, 10]
lr = {}
for stage in ("val", "test"):
    H = split.histories(stage)
    ease = EASE.fit(split.train if stage == "val" else H, ds.n_items, 50.0)
    B = torch.from_numpy(ease.weights).float()
    X = torch.from_numpy(interaction_matrix(H, ds.n_items).toarray()).float()
    torch.manual_seed(0)
    U, S, V = torch.svd_lowrank(B, q=266, niter=6)
    for r in ranks:
        E = X @ B if r == 0 else (X @ (U[:, :r] * S[:r])) @ V[:, :r].T
        lr[(stage, r)] = E
        print(stage, r, "ease-lowrank ndcg", nd(rank_of_targets(E.numpy(), H, split.targets(stage))), flush=True)
res = {}
for run in RUNS:
    fn = model_score_fn(load_artifact(str(run / "models"), with_teacher=True).teacher)
    for stage in ("val", "test"):
        H, T, Y = split.histories(stage), split.history_times(stage), split.targets(stage)
        t = torch.from_numpy(np.concatenate([fn(H[s:s+128], T[s:s+128]) for s in range(0, len(H), 128)]))
        res[(run, stage, "teacher")] = nd(rank_of_targets(t.numpy(), H, Y))
        for r in ranks:
            for b in betas:
                res[(run, stage, r, b)] = nd(rank_of_targets((t + b * lr[(stage, r)]).numpy(), H, Y))
    print(run, "teacher", res[(run, "val", "teacher")], res[(run, "test", "teacher")], flush=True)
for r in ranks:
    for b in betas:
        v = np.mean([res[(x, "val", r, b)] for x in RUNS]); t = [res[(x, "test", r, b)] for x in RUNS]
        print(f"r={r} b={b} val {v:.4f} test mean {np.mean(t):.4f} min {min(t):.4f} x EASE {np.mean(t)/0.0411:.2f} min {min(t)/0.0411:.2f}")
