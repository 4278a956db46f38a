"""Single-process distillation experiments: student from teacher (+ beta * EASE) soft targets.

``--mask`` leaves each position's history out of both softmaxes, as ``StudentTrain`` does with
``mask_history`` (``losses.history_index``); ``--lr``, ``--freeze_items`` (the item tower stays the
teacher's) and ``--patience`` are the recipe knobs of the fifth round."""
import argparse, json, sys, time
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, __import__("os").path.dirname(__file__))
from _paths import DATASET, OUT, RUN, text_embeddings_file  # noqa: E402,F401
from distilrec.artifacts import load_artifact
from distilrec.baselines import EASE
from distilrec.config import StudentConfig
from distilrec.data import Split, load_dataset
from distilrec.losses import IGNORE, _leave_out, history_index
from distilrec.metrics import evaluate_scores, model_score_fn
from distilrec.models import Student
from training.loop import _Users, _Collate
p = argparse.ArgumentParser()
p.add_argument("--beta", type=float, default=0.0)
p.add_argument("--seed", type=int, default=0); p.add_argument("--threads", type=int, default=1)
p.add_argument("--alpha", type=float, default=0.5); p.add_argument("--T", type=float, default=2.0)
p.add_argument("--tag", default="")
p.add_argument("--mask", action="store_true"); p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--freeze_items", action="store_true"); p.add_argument("--patience", type=int, default=8)
p.add_argument("--teacher", default=""); p.add_argument("--student", default="{}")
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
art = load_artifact(str(RUN), with_teacher=True)
teacher = art.teacher.eval()
if a.teacher:
    from distilrec.artifacts import model_from_bytes
    import pathlib
    d = pathlib.Path(a.teacher)
    teacher = model_from_bytes((d / "config.json").read_bytes(), (d / "model.safetensors").read_bytes(),
                               np.asarray(art.items.text_emb, dtype=np.float32)).eval()
for q in teacher.parameters(): q.requires_grad_(False)
emb = torch.from_numpy(np.asarray(art.items.text_emb, dtype=np.float32))
N = ds.n_items
Bp = None
if a.beta:
    t0 = time.time(); B = torch.from_numpy(EASE.fit(split.train, N, 50.0).weights); print("ease fit", time.time() - t0, flush=True)
    Bp = torch.cat([B, torch.zeros(1, N)])
student = Student(StudentConfig(n_items=N, text_dim=emb.shape[1], **json.loads(a.student)), emb.clone())
if student.cfg.d_model == teacher.cfg.d_model:
    student.items.load_state_dict(teacher.items.state_dict())
else:
    print("no init from teacher (widths differ)")
if a.freeze_items:
    for q in student.items.parameters(): q.requires_grad_(False)
opt = torch.optim.Adam([q for q in student.parameters() if q.requires_grad], lr=a.lr)
loader = torch.utils.data.DataLoader(_Users(split.train, split.history_times("val")), batch_size=32, shuffle=True,
                                     collate_fn=_Collate(N, student.cfg.max_len, teacher.cfg.max_len, seed=a.seed * 1000))
def ev(stage, m):
    return evaluate_scores(model_score_fn(m), split.histories(stage), split.targets(stage), times=split.history_times(stage))["ndcg@10"]
best, stale = -1, 0
for epoch in range(60):
    if stale >= a.patience: break
    student.train(); t0 = time.time(); tot = n = 0
    for inputs, targets, times in loader:
        hidden = student.encode(inputs, times); length = hidden.shape[1]
        keep = targets[:, -length:] != IGNORE
        s_logits = student.logits(hidden[keep])
        seen = history_index(inputs, targets[:, -length:], N) if a.mask else None
        if seen is not None: s_logits = _leave_out(s_logits, seen)
        loss = F.cross_entropy(s_logits, targets[:, -length:][keep])
        with torch.no_grad():
            t_logits = teacher.logits(teacher.encode(inputs, times)[:, -length:][keep])
            if Bp is not None:
                pre = Bp[inputs[:, :-length]].sum(1) if inputs.shape[1] > length else 0
                cum = Bp[inputs[:, -length:]].cumsum(1) + (pre[:, None] if torch.is_tensor(pre) else 0)
                t_logits = t_logits + a.beta * cum[keep]
            if seen is not None: t_logits = _leave_out(t_logits, seen)
        kl = F.kl_div(F.log_softmax(s_logits / a.T, -1), F.log_softmax(t_logits / a.T, -1), log_target=True, reduction="batchmean")
        loss = (1 - a.alpha) * loss + a.alpha * a.T ** 2 * kl
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); tot += float(loss.detach()); n += 1
    val, test = ev("val", student), ev("test", student)
    if val > best: best, stale, row = val, 0, (epoch, val, test)
    else: stale += 1
    print(f"{a.tag} ep {epoch} loss {tot/n:.3f} val {val:.4f} test {test:.4f} {'*' if stale == 0 else ''} {time.time()-t0:.1f}s", flush=True)
print(json.dumps({"tag": a.tag, "args": vars(a), "best_epoch": row[0], "val": row[1], "test": row[2]}), flush=True)
