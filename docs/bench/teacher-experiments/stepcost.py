"""The cost of leaving the history out of the softmax: one training step of the default teacher with
``mask_history`` on and off, in turns, on the same six batches of 16 users (one Ray Train worker's share
of a step), one thread. Prints the mean step time of each turn; the ratio within one run is the figure."""
import os, sys, time, numpy as np, torch
sys.path.insert(0, os.path.dirname(__file__))
from _paths import DATASET, text_embeddings_file  # noqa: E402
from distilrec.config import TeacherConfig
from distilrec.data import Split, load_dataset
from distilrec.losses import TeacherTrain
from distilrec.models import Teacher
from training.loop import _Users, _Collate

torch.set_num_threads(1); torch.manual_seed(0)
ds = load_dataset(DATASET); split = Split.leave_one_out(ds)
emb = np.load(text_embeddings_file())
cfg = TeacherConfig(n_items=ds.n_items, text_dim=emb.shape[1])
model = Teacher(cfg, torch.from_numpy(emb.copy()))
loader = torch.utils.data.DataLoader(_Users(split.train, split.history_times("val")), batch_size=16, shuffle=True,
                                     collate_fn=_Collate(cfg.n_items, cfg.max_len, cfg.max_len, seed=0))
batches = [b for _, b in zip(range(6), loader)]
times = {False: [], True: []}
for turn in range(3):
    for mask in (False, True):
        w = TeacherTrain(model, mask_history=mask).train(); t0 = time.perf_counter()
        for inp, tgt, tm in batches:
            w(inp, tgt, tm).backward()
        times[mask].append((time.perf_counter() - t0) / len(batches))
        print(f"turn {turn} mask_history={mask}: {times[mask][-1] * 1000:.0f} ms/step", flush=True)
print(f"{DATASET}: on/off = {np.median(times[True]) / np.median(times[False]):.2f} (medians of the turns)")
