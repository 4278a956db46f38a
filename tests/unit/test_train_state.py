"""training/loop.py's resumable checkpoint: written with plain types only, read back with
``torch.load(weights_only=True)``, so a tampered train_state.pt cannot run code in a training worker."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from training.loop import load_train_state, save_train_state


def test_train_state_round_trips_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model(torch.tensor([1, 2])).sum().backward()
    opt.step()  # the optimizer state now holds step counts and moment tensors
    history = [{"epoch": 0, "loss": np.float32(1.5), "val_ndcg@10": 0.25, "rank": 0, "bf16": False}]
    path = tmp_path / "train_state.pt"
    save_train_state(path, model, opt, epoch=np.int64(3), history=history, best=np.float64(0.25), stale=1)

    state = load_train_state(path)
    assert state["epoch"] == 3 and state["best"] == 0.25 and state["stale"] == 1
    assert state["history"] == [{"epoch": 0, "loss": 1.5, "val_ndcg@10": 0.25, "rank": 0, "bf16": False}]
    assert type(state["history"][0]["loss"]) is float
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k
    model2 = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3, weight_decay=1e-4)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for k, s in opt.state_dict()["state"].items():
        assert all(torch.equal(s[n], opt2.state_dict()["state"][k][n]) for n in s)


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: it stands for any code a tampered checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_checkpoint_that_names_other_objects_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "train_state.pt"
    torch.save({"model": {}, "epoch": 0, "history": [_RunsCode(marker)]}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_train_state(path)
    assert not marker.exists()
