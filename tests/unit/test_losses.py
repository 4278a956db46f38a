"""Training wrappers: next-item batches, the teacher's cross-entropy and the distillation loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distilrec.losses import (IGNORE, StudentTrain, TeacherTrain, history_index, next_item_batch, softmax_loss,
                              softmax_loss_reference)

PAD = 12  # n_items of the conftest fixtures
SEQS = [np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([8, 9, 10])]


def _positions(seqs, max_len):
    """(history, target) for every next-item position the batch trains on, computed directly."""
    out = []
    for s in seqs:
        s = list(s)[-(max_len + 1):]
        for t in range(1, len(s)):
            out.append((s[:t], s[t]))
    return out


def test_next_item_batch_shifts_and_ignores_padding():
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=8)
    assert inputs.tolist() == [[1, 2, 3, 4], [PAD, PAD, PAD, 6], [PAD, PAD, 8, 9]]
    assert targets.tolist() == [[2, 3, 4, 5], [IGNORE, IGNORE, IGNORE, 7], [IGNORE, IGNORE, 9, 10]]


def test_next_item_batch_truncates_to_the_most_recent_and_stays_aligned():
    inputs, targets = next_item_batch([np.arange(10)], pad=PAD, max_len=4)
    assert inputs.tolist() == [[5, 6, 7, 8]]
    assert targets.tolist() == [[6, 7, 8, 9]]


def test_next_item_batch_one_item_sequence_has_no_target():
    inputs, targets = next_item_batch([np.array([3]), np.array([1, 2])], pad=PAD, max_len=4)
    assert inputs.tolist() == [[PAD], [1]]
    assert targets.tolist() == [[IGNORE], [2]]


def _unseen(history, target):
    """Indices of the catalogue left in a position's softmax when its history is masked."""
    return [i for i in range(PAD) if i not in set(history) or i == target]


def _ce(logits, history, target, mask):
    """Cross-entropy of one position, over the items not in its history when ``mask``."""
    keep = _unseen(history, target) if mask else list(range(PAD))
    return F.cross_entropy(logits[keep][None], torch.tensor([keep.index(target)]))


def _position_logits(model, seqs, max_len):
    """Model logits at every next-item position, encoding each user's own (unpadded) input alone.

    Positions are aligned to the end of the input the model reads, so position t of a training
    sequence is *not* the same as scoring the prefix up to t on its own.
    """
    out = []
    for s in seqs:
        inp = list(s)[-(max_len + 1):][:-1]
        hidden = model.encode(torch.tensor([inp]))[0]
        out.extend(model.logits(hidden))
    return out


@pytest.mark.parametrize("mask", [True, False])
def test_student_without_teacher_is_plain_cross_entropy(student, mask):
    wrapper = StudentTrain(student, teacher=None, mask_history=mask).eval()
    assert wrapper.alpha == 0.0
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=student.cfg.max_len)
    loss = wrapper(inputs, targets)
    # independent reference: each user alone, a softmax over the catalogue (less the history with mask)
    with torch.no_grad():
        logits = _position_logits(student, SEQS, student.cfg.max_len)
        pos = _positions(SEQS, student.cfg.max_len)
        ref = torch.stack([_ce(lg, h, y, mask) for lg, (h, y) in zip(logits, pos)]).mean()
    assert loss.ndim == 0
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)


def test_student_trains_on_its_own_reach_of_a_longer_batch(student, teacher):
    # A batch built for the teacher's reach (8) is longer than the student's (6): the student's loss
    # covers the last 6 positions only, and the teacher scores them with its whole context. The
    # history left out of the softmax is the whole batch's, beyond the student's reach too.
    seqs = [np.arange(10) % PAD]
    inputs, targets = next_item_batch(seqs, pad=PAD, max_len=teacher.cfg.max_len)
    assert inputs.shape[1] == 8 and inputs[0].tolist() == list(range(1, 9))
    loss = StudentTrain(student, None).eval()(inputs, targets)
    with torch.no_grad():
        logits = student.logits(student.encode(inputs[:, -6:])[0])
        ys = targets[0, -6:].tolist()
        ref = torch.stack([_ce(lg, range(1, y), y, True) for lg, y in zip(logits, ys)]).mean()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask", [True, False])
def test_teacher_train_is_cross_entropy_over_every_position(teacher, mask):
    wrapper = TeacherTrain(teacher, mask_history=mask).eval()
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=teacher.cfg.max_len)
    loss = wrapper(inputs, targets)
    with torch.no_grad():
        logits = _position_logits(teacher, SEQS, teacher.cfg.max_len)
        pos = _positions(SEQS, teacher.cfg.max_len)
        ref = torch.stack([_ce(lg, h, y, mask) for lg, (h, y) in zip(logits, pos)]).mean()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", [True, False])
def test_distillation_loss_mixes_cross_entropy_and_softened_kl(student, teacher, mask):
    temperature, alpha = 2.0, 0.3
    wrapper = StudentTrain(student, teacher, temperature=temperature, alpha=alpha, mask_history=mask).eval()
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=student.cfg.max_len)
    loss = wrapper(inputs, targets)
    ce, kl = [], []
    with torch.no_grad():
        t_logits = _position_logits(teacher, SEQS, student.cfg.max_len)
        s_logits = _position_logits(student, SEQS, student.cfg.max_len)
        for (h, y), t, s in zip(_positions(SEQS, student.cfg.max_len), t_logits, s_logits):
            ce.append(_ce(s, h, y, mask))
            if mask:  # both distributions over the items not in the history
                keep = _unseen(h, y)
                t, s = t[keep], s[keep]
            p_t = F.softmax(t / temperature, -1)
            kl.append((p_t * (F.log_softmax(t / temperature, -1) - F.log_softmax(s / temperature, -1))).sum())
    ref = (1 - alpha) * torch.stack(ce).mean() + alpha * temperature ** 2 * torch.stack(kl).mean()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-5)


def test_alpha_zero_with_teacher_equals_no_teacher(student, teacher):
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=student.cfg.max_len)
    a = StudentTrain(student, teacher, alpha=0.0).eval()(inputs, targets)
    b = StudentTrain(student, None).eval()(inputs, targets)
    torch.testing.assert_close(a, b)


def test_teacher_stays_in_eval_mode_and_gets_no_gradients(student, teacher):
    teacher.train()
    wrapper = StudentTrain(student, teacher, alpha=0.5)
    assert not teacher.training
    wrapper.train()
    assert wrapper.training and student.training
    assert not teacher.training
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=student.cfg.max_len)
    wrapper(inputs, targets).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert student.items.id_emb.weight.grad is not None
    assert student.pos_emb.weight.grad is not None
    wrapper.eval()
    assert not teacher.training and not student.training


def test_teacher_targets_are_deterministic_in_train_mode(student, teacher):
    # The student's dropout is off; the teacher's dropout (0.1 in the fixture) must not apply either.
    student_no_dropout = type(student)(student.cfg.model_copy(update={"dropout": 0.0}),
                                       text_emb=student.items.text_emb)
    wrapper = StudentTrain(student_no_dropout, teacher, alpha=1.0).train()
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=student.cfg.max_len)
    with torch.no_grad():
        assert wrapper(inputs, targets).item() == pytest.approx(wrapper(inputs, targets).item(), rel=1e-6)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_losses_run_under_bf16_autocast_with_finite_gradients(student, teacher, with_teacher):
    """The GPU path trains under bf16 autocast (``use_gpu``); the same code must hold there: a loss
    close to the fp32 one and finite gradients (here with the CPU's autocast)."""
    if with_teacher:
        wrapper = StudentTrain(student, teacher, alpha=0.5).eval()
    else:
        wrapper = TeacherTrain(teacher).eval()
    max_len = wrapper.model.cfg.max_len
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=max_len)
    times = torch.cumsum(torch.full(inputs.shape, 600), 1)
    ref = wrapper(inputs, targets, times).detach()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = wrapper(inputs, targets, times)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.detach().float(), ref, rtol=0.05, atol=0.05)
    loss.backward()
    grads = [p.grad for p in wrapper.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_history_index_lists_each_kept_positions_history_and_not_padding():
    inputs, targets = next_item_batch([np.array([5, 3, 7]), np.array([2, 9]), np.array([4])], pad=PAD, max_len=8)
    assert inputs.tolist() == [[5, 3], [PAD, 2], [PAD, PAD]]  # the third user has no position to train
    pairs = lambda index: sorted((int(i) // PAD, int(i) % PAD) for i in index)  # (row, item)
    assert pairs(history_index(inputs, targets, PAD)) == [(0, 5), (1, 3), (1, 5), (2, 2)]  # rows: kept positions
    assert pairs(history_index(inputs, targets[:, -1:], PAD)) == [(0, 3), (0, 5), (1, 2)]  # last position only


def test_leaving_the_history_out_can_only_lower_the_loss(student, teacher):
    # Fewer competitors in each softmax: the masked cross-entropy is at most the plain one.
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=teacher.cfg.max_len)
    with torch.no_grad():
        for masked, plain in ((TeacherTrain(teacher), TeacherTrain(teacher, mask_history=False)),
                              (StudentTrain(student, None), StudentTrain(student, None, mask_history=False))):
            assert masked.eval()(inputs, targets) < plain.eval()(inputs, targets)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_masked_loss_has_the_gradient_of_the_reference(student, teacher, with_teacher):
    # The fill happens outside autograd (losses._leave_out): the gradient must still be the masked
    # loss's, here against the reference that drops the history's logits before its softmax.
    model = student if with_teacher else teacher
    wrapper = StudentTrain(student, teacher, alpha=0.5) if with_teacher else TeacherTrain(teacher)
    inputs, targets = next_item_batch(SEQS, pad=PAD, max_len=model.cfg.max_len)
    wrapper.eval()(inputs, targets).backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    logits = _position_logits(model, SEQS, model.cfg.max_len)
    pos = _positions(SEQS, model.cfg.max_len)
    ref = torch.stack([_ce(lg, h, y, True) for lg, (h, y) in zip(logits, pos)]).mean()
    if with_teacher:
        with torch.no_grad():
            t_logits = _position_logits(teacher, SEQS, model.cfg.max_len)
        kl = []
        for (h, y), t, s in zip(pos, t_logits, logits):
            keep = _unseen(h, y)
            t, s = t[keep] / 2.0, s[keep] / 2.0
            kl.append((F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum())
        ref = 0.5 * ref + 0.5 * 4.0 * torch.stack(kl).mean()
    ref.backward()
    want = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_an_item_that_recurs_stays_a_finite_target(student, teacher):
    # Some datasets have repeat interactions: the target is never left out of its own softmax.
    inputs, targets = next_item_batch([np.array([4, 6, 4, 6])], pad=PAD, max_len=student.cfg.max_len)
    for wrapper in (TeacherTrain(teacher), StudentTrain(student, teacher, alpha=0.5)):
        loss = wrapper.eval()(inputs, targets)
        # A target left out of its own softmax would cost about 1e9 (its logit is -1e9), not merely be
        # infinite, so the bound is what tells the two apart.
        assert torch.isfinite(loss) and loss.item() < 100


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (1.0, 0.5), (2.0, 0.9), (4.0, 1.0)])
def test_softmax_loss_has_the_value_and_gradient_of_autograds_losses(temperature, alpha):
    # The written-out gradient (losses._SoftmaxLoss) against autograd through F.cross_entropy and
    # F.kl_div (softmax_loss_reference), in float64, with some entries left out of both softmaxes as the
    # history mask leaves them.
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(7, 50, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(7, 50, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 50, (7,), generator=g)
    left_out = torch.rand(7, 50, generator=g) < 0.3
    left_out[torch.arange(7), target] = False
    with torch.no_grad():
        s.masked_fill_(left_out, -1e9)
        t.masked_fill_(left_out, -1e9)
    weights = torch.randn(7, generator=g, dtype=torch.float64)  # a non-trivial upstream gradient
    got = softmax_loss(s, target, t.clone(), temperature, alpha)
    (got * weights.sum()).backward()
    got_grad, s.grad = s.grad.clone(), None
    ref = softmax_loss_reference(s, target, t, temperature, alpha)
    (ref * weights.sum()).backward()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got_grad, s.grad)
    assert (got_grad[left_out] == 0).all()


def test_softmax_loss_without_a_teacher_leaves_the_logits_untouched():
    s = torch.randn(4, 9, requires_grad=True)
    before = s.detach().clone()
    softmax_loss(s, torch.tensor([1, 2, 3, 4])).backward()
    assert torch.equal(s.detach(), before)
    torch.testing.assert_close(s.grad.sum(-1), torch.zeros(4))  # softmax - onehot sums to 0 in each row
