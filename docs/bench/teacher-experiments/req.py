"""Teacher with a request-time feature: each position also gets an embedding of the log2 time until
the next event (the next item in training, the request at serving). Single process, like teach.py."""
import argparse, json, sys, time, pathlib
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUN, text_embeddings_file  # noqa: E402,F401
from distilrec.config import TeacherConfig
from distilrec.data import Split, load_dataset
from distilrec.losses import IGNORE, crop_window, next_item_batch
from distilrec.metrics import rank_of_targets, ndcg_hr
from distilrec.models import Teacher, pad_histories, _gap_bounds
from training.loop import _Users

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0); p.add_argument("--threads", type=int, default=1)
p.add_argument("--epochs", type=int, default=70); p.add_argument("--patience", type=int, default=8)
p.add_argument("--req", type=int, default=1); p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--shuffle_ties", type=int, default=0); p.add_argument("--batch", type=int, default=32); p.add_argument("--tag", default="")
p.add_argument("--model", default="{}")
p.add_argument("--easeinit", type=float, default=0.0); p.add_argument("--future", type=int, default=1); p.add_argument("--fw", type=float, default=1.0)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
ds = load_dataset(DATASET)
if a.shuffle_ties:  # same-second ratings in a random order (one fixed draw), instead of the file's
    rng = np.random.default_rng(12345)
    for u, (s, t) in enumerate(zip(ds.sequences, ds.timestamps)):
        ds.sequences[u] = s[np.lexsort((rng.random(len(s)), t))]
split = Split.leave_one_out(ds)
emb = np.load(text_embeddings_file())
cfg = TeacherConfig(n_items=ds.n_items, text_dim=emb.shape[1], **json.loads(a.model))
NB = cfg.time_buckets

class ReqTeacher(Teacher):
    def __init__(self, cfg, text_emb):
        super().__init__(cfg, text_emb)
        self.next_emb = nn.Embedding(NB, cfg.d_model); nn.init.normal_(self.next_emb.weight, std=0.02)
    def encode(self, hist, times=None, last_only=False, next_times=None):
        if next_times is None or not a.req:
            return super().encode(hist, times, last_only)
        b = torch.bucketize(next_times.long() - times.long(), _gap_bounds(NB, hist.device), right=True)
        b = torch.where(hist != self.cfg.n_items, b, 0)
        extra = self.next_emb(b)
        orig = self.items.embed
        self.items.embed = lambda rows, scale: orig(rows, scale) + extra[:, -rows.shape[1]:]
        try:
            return super().encode(hist, times, last_only)
        finally:
            del self.items.embed

class Collate:
    def __init__(self, seed): self.rng = np.random.default_rng(seed)
    def __call__(self, users):
        seqs, times = [], []
        for s, t in users:
            s, t = crop_window(s, t, cfg.max_len, self.rng); seqs.append(s); times.append(t)
        inp, tgt, tm = next_item_batch(seqs, cfg.n_items, cfg.max_len, times)
        nt = pad_histories([t[1:] for t in times], 0, cfg.max_len)
        return inp, tgt, tm, nt

model = ReqTeacher(cfg, torch.from_numpy(emb.copy()))
if a.easeinit:
    from distilrec.baselines import EASE
    B = torch.from_numpy(EASE.fit(split.train, ds.n_items, 50.0).weights).float()
    U, S, V = torch.svd_lowrank(B, q=cfg.d_model + 10, niter=4)
    E = (U[:, :cfg.d_model] + V[:, :cfg.d_model]) / 2 * S[:cfg.d_model].sqrt()
    E = E / E.std() * a.easeinit
    with torch.no_grad(): model.items.id_emb.weight[:-1] = E
    print("ease init", E.shape, float(E.std()), flush=True)
opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=a.lr)
loader = torch.utils.data.DataLoader(_Users(split.train, split.history_times("val")), batch_size=a.batch, shuffle=True,
                                     collate_fn=Collate(a.seed * 1000))
def ev(stage):
    H, T, Y = split.histories(stage), split.history_times(stage), split.targets(stage)
    req = np.array([t[-2 if stage == "val" else -1] for t in split.times])
    model.eval(); ranks = []
    with torch.no_grad():
        for s in range(0, len(H), 256):
            h = H[s:s+256]
            hist = pad_histories(h, cfg.n_items, cfg.max_len)
            tm = pad_histories(T[s:s+256], 0, cfg.max_len)
            nt = pad_histories([np.append(t[1:], r) for t, r in zip(T[s:s+256], req[s:s+256])], 0, cfg.max_len)
            u = model.encode(hist, tm, last_only=True, next_times=nt)[:, -1]
            ranks.append(rank_of_targets((u @ model.item_vectors().T).numpy(), h, Y[s:s+256]))
    return ndcg_hr(np.concatenate(ranks), 10)[0]
best, stale, rows = -1, 0, []
for epoch in range(a.epochs):
    if stale >= a.patience: break
    model.train(); t0 = time.time(); tot = n = 0
    for inp, tgt, tm, nt in loader:
        hidden = model.encode(inp, tm, next_times=nt); keep = tgt != IGNORE
        if a.future <= 1:
            loss = F.cross_entropy(model.logits(hidden[keep]), tgt[keep])
        else:
            lp = F.log_softmax(model.logits(hidden[keep]), -1)
            fut = torch.stack([F.pad(tgt[:, j:], (0, j), value=IGNORE) for j in range(a.future)], -1)[keep]  # (M, K)
            ok = fut != IGNORE
            nll = -lp.gather(1, fut.clamp(min=0)) * ok
            loss = nll[:, 0].mean() + a.fw * (nll[:, 1:].sum() / ok[:, 1:].sum().clamp(min=1))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); tot += float(loss); n += 1
    val = ev("val"); test = ev("test"); imp = val > best
    if imp:
        best, stale, best_row = val, 0, (epoch, val, test)
        d = (OUT / "models" / a.tag); d.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), d / "state.pt")
    else: stale += 1
    rows.append((epoch, tot / n, val, test))
    print(f"{a.tag} ep {epoch} loss {tot/n:.3f} val {val:.4f} test {test:.4f} {'*' if imp else ''} {time.time()-t0:.1f}s", flush=True)
print(json.dumps({"tag": a.tag, "args": vars(a), "best_epoch": best_row[0], "val": best_row[1], "test": best_row[2], "epochs": len(rows), "curve": rows}), flush=True)
