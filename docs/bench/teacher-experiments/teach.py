"""Single-process teacher experiments (mirrors training/loop.py worker_loop with one worker)."""
import argparse, copy, json, sys, time
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUN, text_embeddings_file  # noqa: E402,F401
from distilrec.config import TeacherConfig
from distilrec.data import Split, load_dataset
from distilrec.losses import TeacherTrain, IGNORE
from distilrec.metrics import evaluate_scores, model_score_fn
from distilrec.models import Teacher
from training.loop import _Users, _Collate

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0); p.add_argument("--threads", type=int, default=1)
p.add_argument("--ema", type=float, default=0.0); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--wd", type=float, default=0.0); p.add_argument("--ls", type=float, default=0.0)
p.add_argument("--epochs", type=int, default=60); p.add_argument("--patience", type=int, default=8)
p.add_argument("--batch", type=int, default=32); p.add_argument("--model", default="{}")
p.add_argument("--tag", default="")
p.add_argument("--maskseen", type=int, default=0)  # 1: the items already in the input get no probability
p.add_argument("--save_all", type=int, default=0)  # 1: keep every epoch's weights (snapshot ensembles)
p.add_argument("--plateau", type=int, default=0); p.add_argument("--factor", type=float, default=0.5)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
emb = np.load(text_embeddings_file())
cfg = TeacherConfig(n_items=ds.n_items, text_dim=emb.shape[1], **json.loads(a.model))
model = Teacher(cfg, torch.from_numpy(emb.copy()))
loss_mod = TeacherTrain(model)
opt = torch.optim.Adam([q for q in loss_mod.parameters() if q.requires_grad], lr=a.lr, weight_decay=a.wd)
loader = torch.utils.data.DataLoader(_Users(split.train, split.history_times("val")), batch_size=a.batch, shuffle=True,
                                     collate_fn=_Collate(cfg.n_items, cfg.max_len, cfg.max_len, seed=a.seed * 1000))
evalm = Teacher(cfg, torch.from_numpy(emb.copy()))
ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if a.ema else None
def masked_seen_loss(inp, tgt, tm):
    """Cross-entropy with every item of the input up to each position masked out of the softmax, as the
    evaluation removes the history from the ranking (MovieLens has no repeated items)."""
    hidden = model.encode(inp, tm); L2 = hidden.shape[1]; B, L = inp.shape
    tgt = tgt[:, -L2:]; keep = tgt != IGNORE
    t_idx, s_idx = torch.tril_indices(L, L)
    seen = torch.zeros(B, L, cfg.n_items + 1, dtype=torch.bool)
    b_idx = torch.arange(B).repeat_interleave(len(t_idx))
    seen[b_idx, t_idx.repeat(B), inp[b_idx, s_idx.repeat(B)]] = True
    seen = seen[:, -L2:, :cfg.n_items][keep]
    seen[torch.arange(len(seen)), tgt[keep]] = False
    logits = model.logits(hidden[keep]).masked_fill(seen, float("-inf"))
    return F.cross_entropy(logits, tgt[keep])
def ev(stage, m):
    return evaluate_scores(model_score_fn(m), split.histories(stage), split.targets(stage), times=split.history_times(stage))["ndcg@10"]
best, stale, rows = -1, 0, []
for epoch in range(a.epochs):
    if stale >= a.patience: break
    loss_mod.train(); t0 = time.time(); tot = n = 0
    for inp, tgt, tm in loader:
        if a.maskseen:
            loss = masked_seen_loss(inp, tgt, tm)
        elif a.ls:
            hidden = model.encode(inp, tm); tgt = tgt[:, -hidden.shape[1]:]; keep = tgt != IGNORE
            loss = F.cross_entropy(model.logits(hidden[keep]), tgt[keep], label_smoothing=a.ls)
        else:
            loss = loss_mod(inp, tgt, tm)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); tot += float(loss); n += 1
        if ema is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point: ema[k].mul_(a.ema).add_(v, alpha=1 - a.ema)
                    else: ema[k].copy_(v)
    evalm.load_state_dict(ema if ema is not None else model.state_dict())
    if a.save_all:
        d = OUT / "models" / a.tag / "epochs"; d.mkdir(parents=True, exist_ok=True)
        torch.save(evalm.state_dict(), d / f"{epoch:03d}.pt")
    val = ev("val", evalm); test = ev("test", evalm)
    imp = val > best
    if imp:
        best, stale, best_row = val, 0, (epoch, val, test)
        from distilrec.artifacts import model_to_bytes
        cb, wb = model_to_bytes(evalm)
        import pathlib; d = (OUT / "models" / a.tag); d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_bytes(cb); (d / "model.safetensors").write_bytes(wb)
    else: stale += 1
    if a.plateau and stale and stale % a.plateau == 0:
        for g in opt.param_groups: g["lr"] *= a.factor
        print(f"{a.tag} lr -> {opt.param_groups[0]['lr']:.2e}", flush=True)
    rows.append((epoch, tot / n, val, test))
    print(f"{a.tag} ep {epoch} loss {tot/n:.3f} val {val:.4f} test {test:.4f} {'*' if imp else ''} {time.time()-t0:.1f}s", flush=True)
print(json.dumps({"tag": a.tag, "args": vars(a), "best_epoch": best_row[0], "val": best_row[1], "test": best_row[2], "epochs": len(rows)}), flush=True)
