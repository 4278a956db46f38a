"""Teacher and student: documented shapes, padding, causality, the item-table cache, cost counts."""

from __future__ import annotations

import pytest
import torch

from distilrec.config import StudentConfig, TeacherConfig
from distilrec.models import MODELS, Student, Teacher, count_params, native_cpu_kernels, pad_histories

N_ITEMS, TEXT_DIM = 12, 6  # the shapes of the conftest fixtures
PAD = N_ITEMS


@pytest.fixture(autouse=True)
def _fixture_shapes(teacher_cfg, student_cfg):
    assert (teacher_cfg.n_items, teacher_cfg.text_dim) == (student_cfg.n_items, student_cfg.text_dim) == (N_ITEMS, TEXT_DIM)


# ------------------------------------------------------------------------------------- pad_histories

def test_pad_histories_left_pads_and_keeps_the_most_recent():
    out = pad_histories([[1, 2], [3, 4, 5, 6]], pad=9, max_len=3)
    assert out.dtype == torch.int64
    assert out.tolist() == [[9, 1, 2], [4, 5, 6]]


def test_pad_histories_length_is_the_longest_history():
    assert pad_histories([[1], [2, 3]], pad=9, max_len=10).tolist() == [[9, 1], [2, 3]]
    assert pad_histories([[]], pad=9, max_len=10).tolist() == [[9]]


# ------------------------------------------------------------------------------------------- shapes

def test_teacher_shapes(teacher):
    teacher.eval()
    hist = pad_histories([[1, 2, 3], [4]], PAD, teacher.cfg.max_len)
    with torch.no_grad():
        hidden = teacher.encode(hist)
        assert hidden.shape == (2, 3, 16)
        assert teacher.logits(hidden).shape == (2, 3, N_ITEMS)
        assert teacher.user_vector(hist).shape == (2, 16)
        full = teacher.score(hist)
        assert full.shape == (2, N_ITEMS)
        cands = torch.tensor([5, 0, 7])
        sub = teacher.score(hist, cands)
    assert sub.shape == (2, 3)
    torch.testing.assert_close(sub, full[:, cands])


def test_student_shapes(student):
    student.eval()
    hist = pad_histories([[1, 2, 3], [4]], PAD, student.cfg.max_len)
    with torch.no_grad():
        assert student.user_vector(hist).shape == (2, 16)
        assert student.encode(hist).shape == (2, 3, 16)
        assert student.item_vectors().shape == (N_ITEMS, 16)
        assert student.text_item_vectors(torch.randn(5, TEXT_DIM)).shape == (5, 16)
        full = student.score(hist)
        assert full.shape == (2, N_ITEMS)
        cands = torch.tensor([11, 3])
        sub = student.score(hist, cands)
    assert sub.shape == (2, 2)
    torch.testing.assert_close(sub, full[:, cands])


def test_item_table_has_a_zero_padding_row(student, teacher):
    for m in (student, teacher):
        table = m.items.all()
        assert table.shape == (N_ITEMS + 1, 16)
        assert torch.count_nonzero(table[-1]) == 0


def test_item_vector_is_id_embedding_plus_projected_text(student, text_emb):
    with torch.no_grad():
        expected = student.items.id_emb.weight[:N_ITEMS] + student.text_item_vectors(text_emb)
        torch.testing.assert_close(student.item_vectors(), expected)


def test_text_item_vectors_need_text_features():
    m = Student(StudentConfig(n_items=5, text_dim=0, d_model=8, n_heads=1, n_layers=1, max_len=4))
    assert m.item_vectors().shape == (5, 8)
    with pytest.raises(ValueError, match="without text"):
        m.text_item_vectors(torch.randn(1, 4))


def test_wrong_text_embedding_shape_is_an_error():
    with pytest.raises(ValueError, match=r"text_emb must have shape \(5, 4\)"):
        Student(StudentConfig(n_items=5, text_dim=4, d_model=8), text_emb=torch.randn(6, 4))
    with pytest.raises(ValueError, match="text_emb"):
        Teacher(TeacherConfig(n_items=5, text_dim=4, d_model=8), text_emb=None)


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="not divisible"):
        Teacher(TeacherConfig(n_items=5, text_dim=0, d_model=10, n_heads=4))


def test_models_registry():
    assert MODELS["teacher"] == (Teacher, TeacherConfig)
    assert MODELS["student"] == (Student, StudentConfig)


# ------------------------------------------------------------------------------------ time features

def _times(hist: torch.Tensor, gaps: list[int]) -> torch.Tensor:
    return torch.cumsum(torch.tensor([gaps]), 1).expand(hist.shape[0], -1)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_time_gaps_change_the_user_vector(kind, teacher, student):
    m = teacher if kind == "teacher" else student
    m.eval()
    hist = torch.tensor([[1, 2, 3, 4]])
    same_session = _times(hist, [0, 30, 30, 30])
    weeks_apart = _times(hist, [0, 30, 30, 3_000_000])
    with torch.no_grad():
        assert not torch.allclose(m.user_vector(hist, same_session), m.user_vector(hist, weeks_apart))
        # only the gaps count, not the absolute time
        torch.testing.assert_close(m.user_vector(hist, same_session), m.user_vector(hist, same_session + 10**9))


def test_model_without_time_buckets_ignores_times(teacher_cfg, text_emb):
    m = Teacher(teacher_cfg.model_copy(update={"time_buckets": 0}), text_emb=text_emb).eval()
    hist = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(m.user_vector(hist, _times(hist, [0, 1, 10**6])), m.user_vector(hist))
    assert not any("gap" in k for k in m.state_dict())


def test_times_of_padding_do_not_matter(student):
    student.eval()
    hist = torch.tensor([[PAD, PAD, 5, 6]])
    with torch.no_grad():
        a = student.user_vector(hist, torch.tensor([[0, 0, 100, 160]]))
        b = student.user_vector(hist, torch.tensor([[7, 99, 100, 160]]))
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------- padding / length

@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_left_padding_does_not_change_the_user_vector(kind, teacher, student):
    m = teacher if kind == "teacher" else student
    m.eval()
    short = torch.tensor([[3, 7, 1]])
    padded = torch.tensor([[PAD, PAD, 3, 7, 1]])
    with torch.no_grad():
        torch.testing.assert_close(m.user_vector(short), m.user_vector(padded), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.score(short), m.score(padded), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_batched_scores_equal_single_user_scores(kind, teacher, student):
    m = teacher if kind == "teacher" else student
    m.eval()
    histories = [[1, 2, 3, 4, 5, 6], [7], [8, 9]]
    with torch.no_grad():
        batch = m.score(pad_histories(histories, PAD, m.cfg.max_len))
        for i, h in enumerate(histories):
            torch.testing.assert_close(batch[i], m.score(torch.tensor([h]))[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_batched_scores_with_times_equal_single_user_scores(kind, teacher, student):
    """A batch of uneven histories takes the masked path; one full history alone takes the unmasked one."""
    m = teacher if kind == "teacher" else student
    m.eval()
    histories = [[1, 2, 3, 4, 5, 6], [7], [8, 9]]
    stamps = [[100 * 3 ** i for i in range(len(h))] for h in histories]
    times = torch.tensor([[0] * (6 - len(t)) + t for t in stamps])
    with torch.no_grad():
        batch = m.score(pad_histories(histories, PAD, m.cfg.max_len), times=times)
        for i, (h, t) in enumerate(zip(histories, stamps)):
            torch.testing.assert_close(batch[i], m.score(torch.tensor([h]), times=torch.tensor([t]))[0],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_history_longer_than_max_len_reads_the_most_recent(kind, teacher, student):
    m = teacher if kind == "teacher" else student
    m.eval()
    long = torch.arange(m.cfg.max_len + 3).remainder(N_ITEMS).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(m.user_vector(long), m.user_vector(long[:, -m.cfg.max_len:]))


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_empty_history_scores_are_finite(kind, teacher, student):
    m = teacher if kind == "teacher" else student
    m.eval()
    with torch.no_grad():
        scores = m.score(pad_histories([[]], PAD, m.cfg.max_len))
    assert scores.shape == (1, N_ITEMS)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_models_are_causal(kind, teacher, student):
    teacher = teacher if kind == "teacher" else student
    teacher.eval()
    a = torch.tensor([[PAD, 1, 2, 3, 4, 5]])
    b = torch.tensor([[PAD, 1, 2, 3, 9, 5]])  # position 4 changed
    with torch.no_grad():
        ha, hb = teacher.encode(a), teacher.encode(b)
    torch.testing.assert_close(ha[:, :4], hb[:, :4])
    assert not torch.allclose(ha[:, 4], hb[:, 4])
    assert not torch.allclose(ha[:, 5], hb[:, 5])  # later positions do see it


def test_teacher_uses_the_order_of_the_history(teacher):
    teacher.eval()
    with torch.no_grad():
        a = teacher.user_vector(torch.tensor([[1, 2, 3]]))
        b = teacher.user_vector(torch.tensor([[2, 1, 3]]))
    assert not torch.allclose(a, b)


# ------------------------------------------------------------------------------------ item-table cache

@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_cache_is_dropped_by_load_state_dict(kind, teacher_cfg, student_cfg, text_emb):
    cls, cfg = (Teacher, teacher_cfg) if kind == "teacher" else (Student, student_cfg)
    m, other = cls(cfg, text_emb=text_emb).eval(), cls(cfg, text_emb=text_emb).eval()
    hist = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        before = m.score(hist)  # fills the eval-mode cache
        expected = other.score(hist)
    assert not torch.allclose(before, expected)
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m.score(hist), expected)


def test_item_vectors_follow_weights_loaded_into_the_item_tower(student_cfg, text_emb):
    """The cached item vectors live with the item tower's table, so loading only the tower's weights
    renews them too."""
    m, other = Student(student_cfg, text_emb=text_emb).eval(), Student(student_cfg, text_emb=text_emb).eval()
    with torch.no_grad():
        m.item_vectors()  # fills the caches
        m.items.load_state_dict(other.items.state_dict())
        torch.testing.assert_close(m.item_vectors(), other.item_vectors())


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_cache_is_dropped_after_training(kind, teacher, student):
    m = teacher if kind == "teacher" else student
    hist = torch.tensor([[1, 2, 3]])
    m.eval()
    with torch.no_grad():
        before = m.score(hist)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    m.score(hist).sum().backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        after = m.score(hist)
        # a fresh computation from the current weights, bypassing any cache
        fresh = m.user_vector(hist) @ m.items._compute()[:-1].T
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh)


def test_cache_is_dropped_when_the_module_moves(student):
    student.eval()
    hist = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert student.score(hist).dtype == torch.float32
    student.double()
    with torch.no_grad():
        assert student.score(hist).dtype == torch.float64


def test_eval_mode_with_grad_still_backpropagates_to_items(student):
    student.eval()
    with torch.no_grad():
        student.score(torch.tensor([[1, 2]]))  # fills the cache
    student.score(torch.tensor([[1, 2]])).sum().backward()
    assert student.items.id_emb.weight.grad is not None
    assert student.items.text_proj.weight.grad is not None




@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_model_without_text_scores_in_eval_mode(kind):
    cfg = dict(n_items=5, text_dim=0, d_model=8, max_len=4)
    m = Teacher(TeacherConfig(**cfg)) if kind == "teacher" else Student(StudentConfig(**cfg))
    hist = torch.tensor([[1, 2]])
    expected = m.eval().score(hist).detach()  # with autograd on, nothing is cached
    with torch.no_grad():
        torch.testing.assert_close(m.score(hist), expected)


def test_model_without_text_evaluates():
    import numpy as np

    from distilrec.metrics import model_score_fn

    m = Student(StudentConfig(n_items=5, text_dim=0, d_model=8, max_len=4))
    assert model_score_fn(m)([np.array([1, 2])]).shape == (1, 5)


def test_model_without_text_scores_with_autograd():
    m = Teacher(TeacherConfig(n_items=5, text_dim=0, d_model=8, max_len=4)).eval()
    assert m.score(torch.tensor([[1, 2]])).shape == (1, 5)


# ------------------------------------------------------------------------------------------- costs

def test_macs_per_candidate_counts_the_layer_shapes():
    m = Student(StudentConfig(n_items=50, text_dim=0, d_model=8, n_heads=1, n_layers=2, max_len=10))
    # first layer, every position: q, k, v, out projections 4·8·8, feed-forward 2·8·32, attention 2·10·8;
    # last layer, the last position alone: the folded query-key and value-output products (8·8 each,
    # one head), scores and weighted sum over 10 positions (2·10·8), feed-forward;
    # shared by 100 candidates, plus one 8-wide dot product each
    first = 10 * (4 * 64 + 2 * 8 * 32) + 2 * 10 * 10 * 8
    last = 2 * 64 + 2 * 10 * 8 + 2 * 8 * 32
    assert m.macs_per_candidate(100) == (first + last) / 100 + 8


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_user_vector_equals_the_last_position_of_the_full_encoding(kind, teacher, student):
    m = teacher if kind == "teacher" else student
    m.eval()
    hist = pad_histories([[1, 2, 3, 4, 5, 6, 7], [8, 9], [10]], PAD, m.cfg.max_len)
    times = torch.cumsum(torch.arange(hist.numel()).view(hist.shape) * 37, 1)
    with torch.no_grad():
        full = m.encode(hist, times)[:, -1]
        torch.testing.assert_close(m.user_vector(hist, times), full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.encode(hist, times, last_only=True)[:, -1], full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["teacher", "student"])
@pytest.mark.parametrize("heads,layers", [(1, 1), (2, 1), (2, 2), (4, 3)])
def test_folded_last_query_attention_equals_the_projected_one(kind, heads, layers, text_emb):
    """Serving and evaluation (eval mode, no autograd) fold the last layer's projections
    (``_Block._last_query_attention``); with autograd on, the keys and values are projected as in
    training. Both give the same scores, with and without padding, for batches and single requests (a
    batch without padding, and a single request, take the dense path: no mask, and for one request
    matrix-vector products)."""
    cls, cfg_cls = (Teacher, TeacherConfig) if kind == "teacher" else (Student, StudentConfig)
    torch.manual_seed(heads * 10 + layers)
    m = cls(cfg_cls(n_items=N_ITEMS, text_dim=TEXT_DIM, d_model=16, n_heads=heads, n_layers=layers, max_len=8),
            text_emb=text_emb).eval()
    for p in m.parameters():  # weights far from their small initialisation, so that errors would show
        torch.nn.init.normal_(p, std=0.3)
    hist = pad_histories([[1, 2, 3, 4, 5, 6, 7, 8, 9], [8, 9], [10]], PAD, 8)
    times = torch.cumsum(torch.randint(0, 5000, hist.shape), 1)
    cands = torch.tensor([0, 3, 5, 11])
    dense = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 1, 2, 3, 4]])
    for h, t in [(hist, times), (hist[:1], times[:1]), (dense, times[:2]), (dense[1:, 3:], times[1:2, 3:])]:
        projected = m.score(h, cands, times=t).detach()
        with torch.no_grad():
            folded = m.score(h, cands, times=t)
        assert projected.abs().max() > 1  # scores of a real spread
        torch.testing.assert_close(folded, projected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_single_request_scores_under_bf16_autocast(kind, teacher, student):
    """One request's history takes the dense path (matrix-vector products); under the CPU's bf16
    autocast it gives what the padded path gives. What the frozen model caches on that first request
    (the folded projections, the item table) stays in float32 for later requests without autocast."""
    m = teacher if kind == "teacher" else student
    m.eval()
    hist, padded = torch.tensor([[3, 7, 1, 4]]), torch.tensor([[PAD, 3, 7, 1, 4]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dense, masked = m.score(hist), m.score(padded)
    assert dense.shape == (1, N_ITEMS) and torch.isfinite(dense).all()
    torch.testing.assert_close(dense.float(), masked.float(), rtol=0.05, atol=0.05)
    with torch.no_grad():
        after = m.score(hist)
    assert after.dtype == torch.float32
    torch.testing.assert_close(after, m.score(hist).detach())  # the same as with autograd on (no cache)


def test_default_student_costs_under_a_tenth_of_the_default_teacher():
    t = Teacher(TeacherConfig(n_items=50, text_dim=0))
    s = Student(StudentConfig(n_items=50, text_dim=0))
    assert s.macs_per_candidate(1000) * 10 <= t.macs_per_candidate(1000)


def test_macs_grow_with_history_length_for_the_teacher():
    short = Teacher(TeacherConfig(n_items=5, text_dim=0, d_model=16, max_len=10))
    long = Teacher(TeacherConfig(n_items=5, text_dim=0, d_model=16, max_len=100))
    assert long.macs_per_candidate() > short.macs_per_candidate()


def test_count_params(student):
    assert count_params(student) == sum(p.numel() for p in student.parameters())
    assert count_params(student) > N_ITEMS * 16


def test_time_gap_buckets_are_log2_of_the_gap():
    from distilrec.models import time_gap_buckets

    gaps = torch.tensor([0, 1, 2, 3, 7, 8, 59, 60, 3599, 86_400, 10**7, 10**9])
    times = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(gaps, 0)]).unsqueeze(0)
    got = time_gap_buckets(times, torch.ones_like(times, dtype=torch.bool), 24)[0, 1:]
    expected = (1 + torch.floor(torch.log2(gaps.double() + 1))).long().clamp_max(23)
    assert got.tolist() == expected.tolist()
    # out-of-order timestamps (clock skew) count as no gap
    skew = time_gap_buckets(torch.tensor([[100, 40]]), torch.ones(1, 2, dtype=torch.bool), 24)
    assert skew.tolist() == [[0, 1]]


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_native_cpu_kernels_score_as_onednn_does(kind, teacher, student):
    m = {"teacher": teacher, "student": student}[kind].eval()
    hist = pad_histories([[1, 2, 3, 4], [5, 6]], m.cfg.n_items, m.cfg.max_len)
    before = native_cpu_kernels(False)
    try:
        with torch.inference_mode():
            onednn = m.score(hist)
            assert native_cpu_kernels(True) is False  # it reports the setting it replaced
            assert not torch.backends.mkldnn.enabled
            native = m.score(hist)
    finally:
        native_cpu_kernels(before)
    torch.testing.assert_close(native, onednn, rtol=1e-5, atol=1e-5)
