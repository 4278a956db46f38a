"""Sparse gradients for the item id table (``TrainConfig.item_grads``): with the sampled softmax a step
reads a few thousand rows of a catalogue of a million, so its gradient holds those rows alone and SparseAdam
updates only them (``distilrec.models.sparse_item_tables``, ``training.loop.make_optimizer``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from distilrec.config import TrainConfig
from distilrec.losses import (
    NegativeSampler,
    StudentTrain,
    TeacherTrain,
    item_counts,
    next_item_batch,
)
from training.loop import (
    SparseAndDense,
    load_train_state,
    make_optimizer,
    save_train_state,
    sparse_tables,
)

PAD = 12  # n_items of the conftest fixtures
SEQS = [np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([8, 9, 10, 2, 3])]
CPU = torch.device("cpu")
SPARSE = TrainConfig(loss="sampled", item_grads="sparse")


def _batch(max_len: int):
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=max_len)
    return inputs, targets, torch.cumsum(torch.full(inputs.shape, 600), 1)


def _teacher_loss(teacher, negatives=3):
    return TeacherTrain(teacher, sampler=NegativeSampler(item_counts(SEQS, PAD), negatives=negatives)).train()


def test_the_sparse_gradient_is_the_dense_one_on_the_rows_read(teacher):
    dense, sparse = _teacher_loss(copy.deepcopy(teacher)), _teacher_loss(teacher)
    assert sparse_tables(sparse, SPARSE, PAD, CPU) == [teacher.items.id_emb.weight]
    batch = _batch(teacher.cfg.max_len)
    for wrapper in (dense, sparse):
        torch.manual_seed(3)  # the same sampled negatives for both
        wrapper(*batch).backward()
    g_dense, g_sparse = dense.model.items.id_emb.weight.grad, sparse.model.items.id_emb.weight.grad
    assert not g_dense.is_sparse and g_sparse.is_sparse
    torch.testing.assert_close(g_sparse.to_dense(), g_dense)
    read = torch.unique(g_sparse.coalesce().indices())
    assert len(read) < PAD + 1  # 3 negatives and the batch's items: not every row of the table
    for (name, a), b in zip(sparse.named_parameters(), dense.parameters()):
        if "id_emb" not in name:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_a_step_moves_the_rows_read_and_leaves_the_others(teacher):
    wrapper = _teacher_loss(teacher, negatives=2)
    tables = sparse_tables(wrapper, SPARSE, PAD, CPU)
    opt = make_optimizer(wrapper, SPARSE, tables)
    assert isinstance(opt, SparseAndDense)
    assert isinstance(opt.parts["sparse"], torch.optim.SparseAdam)
    assert all(p is not tables[0] for g in opt.parts["dense"].param_groups for p in g["params"])
    before = {n: p.detach().clone() for n, p in wrapper.named_parameters()}
    torch.manual_seed(1)
    loss = wrapper(*_batch(teacher.cfg.max_len))
    opt.zero_grad()
    loss.backward()
    read = set(torch.unique(tables[0].grad.coalesce().indices()).tolist()) - {PAD}
    opt.step()
    moved = {i for i in range(PAD + 1)
             if not torch.equal(tables[0][i], before["model.items.id_emb.weight"][i])}
    assert moved == read and len(read) < PAD
    assert not torch.equal(wrapper.model.items.text_proj.weight, before["model.items.text_proj.weight"])


def test_distillation_makes_only_the_students_table_sparse(student, teacher):
    draw = NegativeSampler(item_counts(SEQS, PAD), negatives=4)
    wrapper = StudentTrain(student, teacher, temperature=2.0, alpha=0.9, sampler=draw).train()
    tables = sparse_tables(wrapper, SPARSE, PAD, CPU)
    assert tables == [student.items.id_emb.weight]
    assert student.items.id_emb.sparse and not teacher.items.id_emb.sparse
    opt = make_optimizer(wrapper, SPARSE, tables)
    loss = wrapper(*_batch(teacher.cfg.max_len))
    loss.backward()
    opt.step()
    assert student.items.id_emb.weight.grad.is_sparse
    assert all(p.grad is None for p in teacher.parameters())


def test_the_config_picks_sparse_gradients_with_the_sampled_softmax_on_cpus():
    auto = TrainConfig()
    assert auto.sparse_item_grads(10 ** 6, "cpu") and not auto.sparse_item_grads(10 ** 6, "cuda")
    assert not auto.sparse_item_grads(PAD, "cpu")  # the full softmax reads every row
    assert not TrainConfig(item_grads="dense").sparse_item_grads(10 ** 6, "cpu")
    assert TrainConfig(loss="sampled", item_grads="sparse").sparse_item_grads(PAD, "cuda")
    with pytest.raises(ValueError, match="item_grads: sparse needs the sampled softmax"):
        TrainConfig(item_grads="sparse").sparse_item_grads(PAD, "cpu")


def test_dense_gradients_keep_one_plain_adam(teacher):
    wrapper = _teacher_loss(teacher)
    tc = TrainConfig(loss="sampled", item_grads="dense", weight_decay=1e-4)
    opt = make_optimizer(wrapper, tc, sparse_tables(wrapper, tc, PAD, CPU))
    assert type(opt) is torch.optim.Adam and not teacher.items.id_emb.sparse
    assert opt.param_groups[0]["weight_decay"] == 1e-4


def test_the_sparse_optimiser_state_round_trips_through_a_checkpoint(teacher, tmp_path):
    wrapper = _teacher_loss(teacher)
    opt = make_optimizer(wrapper, SPARSE, sparse_tables(wrapper, SPARSE, PAD, CPU))
    wrapper(*_batch(teacher.cfg.max_len)).backward()
    opt.step()
    save_train_state(tmp_path / "train_state.pt", teacher, opt, epoch=0, history=[], best=0.0, stale=0)
    state = load_train_state(tmp_path / "train_state.pt")

    fresh = _teacher_loss(copy.deepcopy(teacher))
    opt2 = make_optimizer(fresh, SPARSE, sparse_tables(fresh, SPARSE, PAD, CPU))
    opt2.load_state_dict(state["optimizer"])
    for name in ("dense", "sparse"):
        saved, loaded = opt.parts[name].state_dict()["state"], opt2.parts[name].state_dict()["state"]
        assert saved.keys() == loaded.keys() and saved
        torch.testing.assert_close(loaded, saved, rtol=0, atol=0)
    plain = torch.optim.Adam(teacher.parameters()).state_dict()
    with pytest.raises(ValueError, match="item_grads of another kind"):
        opt2.load_state_dict(plain)


def test_a_run_that_no_worker_could_train_is_refused_before_ray_train_starts(tmp_path):
    from training.loop import fit

    with pytest.raises(ValueError, match="item_grads: sparse needs the sampled softmax"):
        fit("teacher", None, None, TrainConfig(item_grads="sparse"), None, str(tmp_path), None,
            extra={"model": {"n_items": PAD}})


def _average_on_rank(rank: int, store_path: str, out_path: str) -> None:
    import torch.distributed as dist

    from training.loop import average_sparse_grads

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    table = torch.nn.Parameter(torch.zeros(6, 3))
    rows = [torch.tensor([1, 4, 4]), torch.tensor([4, 5])][rank]  # rank 0 reads row 4 twice
    values = torch.arange(len(rows) * 3, dtype=torch.float32).reshape(-1, 3) + 10 * rank
    table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, table.shape)
    empty = torch.nn.Parameter(torch.zeros(6, 3))  # no gradient on rank 1
    if rank == 0:
        empty.grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.ones(1, 3), empty.shape)
    average_sparse_grads([table, empty], world=2)
    torch.save({"table": table.grad.to_dense(), "empty": empty.grad.to_dense()}, f"{out_path}.{rank}")
    dist.destroy_process_group()


def test_sparse_gradients_are_averaged_over_the_workers(tmp_path):
    """Two gloo processes, as two Ray Train workers: each ends with the mean of both workers' sparse rows."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "grad")
    mp.start_processes(_average_on_rank, args=(str(tmp_path / "store"), out), nprocs=2, start_method="spawn")
    a, b = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    want = torch.zeros(6, 3)
    want[1] = torch.tensor([0.0, 1, 2]) / 2
    want[4] = (torch.tensor([3.0, 4, 5]) + torch.tensor([6.0, 7, 8]) + torch.tensor([10.0, 11, 12])) / 2
    want[5] = torch.tensor([13.0, 14, 15]) / 2
    for got in (a, b):
        torch.testing.assert_close(got["table"], want)
        torch.testing.assert_close(got["empty"], torch.eye(6)[2].unsqueeze(1).expand(6, 3) / 2)
