"""The sampled softmax: in-batch and sampled negatives with the log-Q correction, for the teacher's loss
and for distillation over the student's candidates (``distilrec.losses``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distilrec.losses import (Candidates, NegativeSampler, StudentTrain, TeacherTrain, history_index, item_counts,
                              next_item_batch, sampled_logits, softmax_loss)

PAD = 12  # n_items of the conftest fixtures
SEQS = [np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([8, 9, 10, 2, 3])]

# A tiny catalogue with a steep popularity curve: item 0 is drawn about 40 times as often as item 19.
N_TINY = 20
COUNTS = (1000 / np.arange(1, N_TINY + 1) ** 1.5).astype(np.int64)


def _grad(hidden: torch.Tensor, targets: torch.Tensor, cands: Candidates) -> torch.Tensor:
    """The gradient of the sampled loss with respect to the logits: item vectors are the identity, so
    ``hidden (N, N_TINY)`` are the full logits and its gradient is theirs."""
    eye = torch.eye(N_TINY, dtype=torch.float64)
    h = hidden.clone().requires_grad_()
    cands = Candidates(cands.items, cands.log_weight.double())
    logits, log_weight = sampled_logits(h, lambda rows: eye[rows], targets, cands, None, N_TINY)
    softmax_loss(logits, torch.zeros_like(targets), log_weight=log_weight).backward()
    return h.grad


def test_whole_catalogue_candidates_give_the_full_softmax_gradient():
    g = torch.Generator().manual_seed(0)
    hidden, targets = torch.randn(5, N_TINY, dtype=torch.float64, generator=g), torch.tensor([0, 3, 3, 7, 19])
    h = hidden.clone().requires_grad_()
    softmax_loss(h, targets).backward()
    torch.testing.assert_close(_grad(hidden, targets, Candidates.whole(N_TINY)), h.grad)


@pytest.mark.parametrize("sampler", ["popularity", "uniform"])
def test_sampled_gradient_matches_the_full_softmax_in_expectation_with_the_log_q_correction(sampler):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, N_TINY, dtype=torch.float64, generator=g)
    targets = torch.tensor([0, 3, 7, 19])
    h = hidden.clone().requires_grad_()
    softmax_loss(h, targets).backward()
    full = h.grad
    negatives, trials = 1024, 500
    errors = {}
    for logq in (True, False):
        draw = NegativeSampler(COUNTS, negatives, sampler, in_batch=False, logq=logq)
        grads = torch.stack([_grad(hidden, targets, draw(targets, generator=g)) for _ in range(trials)])
        errors[logq] = float((grads.mean(0) - full).abs().max())
        if logq:
            se = float((grads.std(0) / trials ** 0.5).max())
    # With the correction the mean gradient differs from the full one by Monte-Carlo noise (its standard
    # error over the 500 trials, measured: about 6e-4) plus the ratio estimator's bias, which is of order
    # 1/K (K = 1024 draws): 4 standard errors + 4/K bounds both with room, and is below 0.01.
    assert errors[True] < min(0.01, 4 * se + 4 / negatives), errors
    if sampler == "popularity":
        # Without it, popular items stand in the softmax about as often as they are drawn and are pushed
        # down too hard: a bias of about 0.16 here that no number of trials averages away.
        assert errors[False] > 0.1, errors


@pytest.mark.parametrize("sampler", ["popularity", "uniform"])
def test_in_batch_and_sampled_weights_estimate_the_partition_function_without_bias(sampler):
    # Row 0's target is fixed; the batch's other targets are drawn from the targets' frequency, as the
    # training batches draw them. Σ over row 0's candidates of exp(s + log_weight) must estimate Σ over
    # the catalogue less its target of exp(s): the (B - 1)·p + K·q expected counts of NegativeSampler.
    g = torch.Generator().manual_seed(2)
    s = torch.randn(N_TINY, dtype=torch.float64, generator=g)
    p = torch.as_tensor(COUNTS / COUNTS.sum())
    y0, batch, trials = 5, 16, 4000
    truth = float(s.exp().sum() - s[y0].exp())
    for logq in (True, False):
        draw = NegativeSampler(COUNTS, 8, sampler, in_batch=True, logq=logq)
        estimates = []
        for _ in range(trials):
            targets = torch.cat([torch.tensor([y0]), torch.multinomial(p, batch - 1, replacement=True, generator=g)])
            c = draw(targets, generator=g)
            keep = c.items != y0  # an accidental hit of row 0's target
            estimates.append(float((s[c.items[keep]] + c.log_weight[keep].double()).exp().sum()))
        mean, se = np.mean(estimates), np.std(estimates) / trials ** 0.5
        if logq:
            assert abs(mean - truth) < 4 * se, (mean, truth, se)  # unbiased: within Monte-Carlo noise
        else:
            assert abs(mean - truth) > 20 * se, (mean, truth, se)  # the raw counts are no estimate of it


def test_accidental_hits_and_the_history_are_left_out_of_their_rows():
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=8)
    keep = targets != -100
    y = targets[keep]
    seen = history_index(inputs, targets, PAD)
    cands = Candidates(torch.arange(0, PAD, 2), torch.zeros(PAD // 2))  # the even items
    hidden = torch.randn(len(y), 4)
    logits, log_weight = sampled_logits(hidden, lambda rows: torch.randn(*rows.shape, 4), y, cands, seen, PAD)
    assert logits.shape == (len(y), 1 + PAD // 2) and log_weight.shape == (1 + PAD // 2,)
    left_out = logits <= -1e8
    assert not left_out[:, 0].any()  # the target's own column stays
    rows, items = (seen // PAD).tolist(), (seen % PAD).tolist()
    for r, target in enumerate(y.tolist()):
        history = {i for rr, i in zip(rows, items) if rr == r}
        for j, item in enumerate(cands.items.tolist()):
            assert bool(left_out[r, 1 + j]) == (item == target or item in history), (r, item)


def test_the_sampler_draws_the_batch_targets_and_its_negatives():
    draw = NegativeSampler(np.ones(PAD), negatives=5, sampler="uniform")
    targets = torch.tensor([3, 3, 7])
    c = draw(targets)
    assert {3, 7} <= set(c.items.tolist()) and len(c.items) <= 2 + 5
    assert torch.equal(c.items, c.items.sort().values) and c.log_weight.shape == c.items.shape
    only_batch = NegativeSampler(np.ones(PAD), negatives=0, sampler="uniform")(targets)
    assert only_batch.items.tolist() == [3, 7]
    lone = NegativeSampler(np.ones(PAD), negatives=0, sampler="uniform")(torch.tensor([3]))  # no other draw
    assert lone.items.tolist() == [3] and torch.isfinite(lone.log_weight).all()
    with pytest.raises(ValueError):
        NegativeSampler(np.ones(PAD), negatives=0, in_batch=False)
    assert item_counts([np.array([0, 2]), np.array([2])], 4).tolist() == [1, 0, 2, 0]


class _Whole:
    """A sampler that offers the whole catalogue: the sampled losses must then be the full ones."""

    def __call__(self, targets: torch.Tensor, generator=None) -> Candidates:
        return Candidates.whole(PAD)


def _loss_and_grads(wrapper, inputs, targets):
    wrapper.model.zero_grad()
    loss = wrapper.eval()(inputs, targets)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in wrapper.model.parameters() if p.grad is not None]


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("kind", ["teacher", "distill"])
def test_losses_over_the_whole_catalogue_as_candidates_are_the_full_losses(student, teacher, kind, mask):
    def make(sampler):
        if kind == "teacher":
            return TeacherTrain(teacher, mask_history=mask, sampler=sampler)
        return StudentTrain(student, teacher, temperature=2.0, alpha=0.7, mask_history=mask, sampler=sampler)

    max_len = teacher.cfg.max_len
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=max_len)
    full_loss, full_grads = _loss_and_grads(make(None), inputs, targets)
    loss, grads = _loss_and_grads(make(_Whole()), inputs, targets)
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(full_grads) > 0
    for a, b in zip(grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_distillation_over_sampled_candidates_trains(student, teacher, sampler):
    draw = NegativeSampler(item_counts(SEQS, PAD), negatives=4, sampler=sampler)
    wrapper = StudentTrain(student, teacher, temperature=2.0, alpha=0.9, sampler=draw).train()
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=teacher.cfg.max_len)
    times = torch.cumsum(torch.full(inputs.shape, 600), 1)
    loss = wrapper(inputs, targets, times)
    assert torch.isfinite(loss) and loss.item() < 100
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # the GPU path's autocast, on the CPU
        assert torch.isfinite(wrapper(inputs, targets, times))


def test_the_config_chooses_the_loss_by_catalogue_size(teacher, student):
    from distilrec.config import DistillConfig, TrainConfig
    from training.distill import student_loss
    from training.teacher import teacher_loss

    assert not TrainConfig().sampled(PAD) and TrainConfig().sampled(10 ** 6)  # auto: full where it fits
    assert TrainConfig(loss="sampled").sampled(PAD) and not TrainConfig(loss="full").sampled(10 ** 6)
    assert TrainConfig(full_softmax_max_items=10).sampled(PAD)
    config = {"train_seqs": SEQS, "text_emb": None, "temperature": 2.0, "alpha": 0.9, "teacher": None}
    assert teacher_loss(teacher, {**config, "train": TrainConfig().model_dump()}).sampler is None
    tc = DistillConfig(loss="sampled", negatives=7, sampler="popularity", in_batch_negatives=False)
    train = TrainConfig.model_validate(tc.model_dump(exclude={"temperature", "alpha", "init_from_teacher"}))
    sampler = teacher_loss(teacher, {**config, "train": train.model_dump()}).sampler
    assert (sampler.negatives, sampler.uniform, sampler.in_batch) == (7, False, False)
    torch.testing.assert_close(sampler.p, torch.as_tensor(item_counts(SEQS, PAD) / 12.0))
    assert student_loss(student, {**config, "train": train.model_dump()}).sampler is not None
