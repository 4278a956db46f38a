"""Fine-tune a finished pipeline teacher (RUN) for a few more epochs, either on train + validation
(every user's validation target becomes one more training target, as a refit before the test would
do) or, as the control, on train alone; validation and test NDCG@10 after each epoch."""
import argparse, json, sys, time
import numpy as np, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUN, text_embeddings_file  # noqa: E402,F401
from distilrec.artifacts import load_model, resolve
from distilrec.data import Split, load_dataset
from distilrec.losses import TeacherTrain
from distilrec.metrics import evaluate_scores, model_score_fn
from training.loop import _Users, _Collate
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--epochs", type=int, default=5)
p.add_argument("--data", choices=("trainval", "train"), default="trainval"); p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(1); torch.manual_seed(a.seed)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
model = load_model(resolve(str(RUN / "models")) + "/teacher", np.load(text_embeddings_file()))
def ev(stage):
    model.eval()
    with torch.no_grad():
        return evaluate_scores(model_score_fn(model), split.histories(stage), split.targets(stage), times=split.history_times(stage))["ndcg@10"]
for prm in model.parameters(): prm.requires_grad_(True)
cfg = model.cfg
loss_mod = TeacherTrain(model)
opt = torch.optim.Adam([q for q in loss_mod.parameters() if q.requires_grad], lr=a.lr)
stage = "test" if a.data == "trainval" else "val"   # histories("test") = train + the validation target
loader = torch.utils.data.DataLoader(_Users(split.histories(stage), split.history_times(stage)), batch_size=32, shuffle=True,
                                     collate_fn=_Collate(cfg.n_items, cfg.max_len, cfg.max_len, seed=a.seed * 1000 + 7))
rows = [(0, ev("val"), ev("test"))]
print(RUN, a.data, a.lr, "ep0", rows[-1], flush=True)
for ep in range(1, a.epochs + 1):
    loss_mod.train(); t0 = time.time()
    for inp, tgt, tm in loader:
        loss = loss_mod(inp, tgt, tm); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    rows.append((ep, ev("val"), ev("test")))
    print(RUN, a.data, a.lr, f"ep{ep}", rows[-1], f"{time.time()-t0:.1f}s", flush=True)
print(json.dumps({"run": str(RUN), "data": a.data, "lr": a.lr, "rows": rows}), flush=True)
