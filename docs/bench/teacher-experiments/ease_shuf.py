import sys, json, numpy as np
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUN, text_embeddings_file  # noqa: E402,F401
from distilrec.data import Split, load_dataset
from distilrec.metrics import evaluate_scores
from distilrec.baselines import EASE, Popularity
ds = load_dataset(DATASET)
rng = np.random.default_rng(12345)
for u, (s, t) in enumerate(zip(ds.sequences, ds.timestamps)):
    ds.sequences[u] = s[np.lexsort((rng.random(len(s)), t))]
split = Split.leave_one_out(ds)
vals = {lam: evaluate_scores(EASE.fit(split.train, ds.n_items, lam).score, split.train, split.val_target)["ndcg@10"] for lam in (10.0, 50.0, 200.0, 500.0)}
lam = max(vals, key=vals.get)
H = split.histories("test")
test = evaluate_scores(EASE.fit(H, ds.n_items, lam).score, H, split.test_target)
pop = evaluate_scores(Popularity.fit(H, ds.n_items).score, H, split.test_target)
out = {"ease_val_by_lambda": {str(k): round(v, 4) for k, v in vals.items()}, "lambda": lam, "ease_test": {k: round(v, 4) for k, v in test.items()}, "popularity_test": {k: round(v, 4) for k, v in pop.items()}}
print(json.dumps(out)); json.dump(out, open(OUT / "ease_shuf.json", "w"), indent=1)
