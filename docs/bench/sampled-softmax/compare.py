"""Sampled against full softmax: per run the teacher's and student's per-user test ranks (recomputed from
each run's artifact), and the mean-over-seeds NDCG@10 ratio with a paired bootstrap over the test users.

    python compare.py PATH/TO/ml-latest-small RUNS      # RUNS: run.sh's output folder; writes RUNS/sampled-softmax.json
"""
import json, sys
import numpy as np
from distilrec.artifacts import load_artifact
from distilrec.data import load_dataset, Split
from distilrec.evaluate import model_ranks
from distilrec.metrics import user_ndcg

data, root = sys.argv[1], sys.argv[2]
ds = load_dataset(f"movielens:{data}")
split = Split.leave_one_out(ds)
seeds = [0, 1, 2]
runs = {}
for loss in ("full", "sampled"):
    for seed in seeds:
        out = f"{root}/{loss}-{seed}"
        rep = json.load(open(f"{out}/report.json"))
        art = load_artifact(out, with_teacher=True, with_histories=False)
        assert art.items.item_ids == ds.item_ids
        r = {"teacher": model_ranks(art.teacher, split), "student": model_ranks(art.student, split)}
        for m in r:  # the artifact's models are the report's
            assert abs(float(user_ndcg(r[m]).mean()) - rep["models"][m]["ndcg@10"]) < 1e-9, (loss, seed, m)
        runs[(loss, seed)] = {"ranks": r, "report": rep}
rng = np.random.default_rng(0)
n = ds.n_users
idx = rng.integers(0, n, size=(2000, n))
result = {"seeds": seeds, "users": n, "resamples": 2000, "runs": {}, "ratios": {}}
for (loss, seed), run in runs.items():
    rep = run["report"]
    result["runs"][f"{loss}-{seed}"] = {
        "teacher_ndcg@10": round(rep["models"]["teacher"]["ndcg@10"], 4),
        "student_ndcg@10": round(rep["models"]["student"]["ndcg@10"], 4),
        "teacher_hr@10": round(rep["models"]["teacher"]["hr@10"], 4),
        "student_hr@10": round(rep["models"]["student"]["hr@10"], 4),
        "wall_s": rep["run"]["wall_s"], "stage_s": rep["run"]["stage_s"],
        "epochs": rep["run"]["epochs"], "peak_rss_mib": rep["run"].get("peak_rss_mib"),
        "ranks": {m: run["ranks"][m].tolist() for m in ("teacher", "student")}}
for m in ("teacher", "student"):
    full = np.stack([user_ndcg(runs[("full", s)]["ranks"][m]) for s in seeds])      # (seeds, users)
    samp = np.stack([user_ndcg(runs[("sampled", s)]["ranks"][m]) for s in seeds])
    ratio = samp.mean() / full.mean()
    boot = samp[:, idx].mean((0, 2)) / full[:, idx].mean((0, 2))
    per_seed = [round(float(samp[i].mean() / full[i].mean()), 4) for i in range(len(seeds))]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    result["ratios"][m] = {"mean_full": round(float(full.mean()), 4), "mean_sampled": round(float(samp.mean()), 4),
                           "ratio": round(float(ratio), 4), "low": round(float(lo), 4), "high": round(float(hi), 4),
                           "per_seed": per_seed}
    print(m, result["ratios"][m])
json.dump(result, open(f"{root}/sampled-softmax.json", "w"), indent=1)
