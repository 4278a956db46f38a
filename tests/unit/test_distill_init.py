"""The training stages' loss modules: the student may start in the teacher's item space; both take
`mask_history` from the training configuration."""

from __future__ import annotations

import torch

from distilrec.artifacts import model_to_bytes
from distilrec.config import TrainConfig
from distilrec.models import Student
from training.distill import student_loss


def _config(teacher, text_emb, init: bool) -> dict:
    return {"teacher": model_to_bytes(teacher), "text_emb": text_emb.numpy(), "temperature": 2.0, "alpha": 0.5,
            "init_from_teacher": init, "train": TrainConfig().model_dump()}


def test_student_of_the_same_width_starts_from_the_teachers_item_tower(teacher, student, text_emb):
    assert student.cfg.d_model == teacher.cfg.d_model
    loss = student_loss(student, _config(teacher, text_emb, init=True))
    torch.testing.assert_close(loss.model.items.id_emb.weight, teacher.items.id_emb.weight)
    torch.testing.assert_close(loss.model.items.text_proj.weight, teacher.items.text_proj.weight)
    assert loss.model.items.id_emb.weight.requires_grad  # a starting point, not frozen


def test_no_copy_when_switched_off_or_widths_differ(teacher, student, student_cfg, text_emb):
    before = student.items.id_emb.weight.detach().clone()
    student_loss(student, _config(teacher, text_emb, init=False))
    torch.testing.assert_close(student.items.id_emb.weight, before)
    narrow = Student(student_cfg.model_copy(update={"d_model": 8, "n_heads": 1}), text_emb=text_emb)
    before = narrow.items.id_emb.weight.detach().clone()
    student_loss(narrow, _config(teacher, text_emb, init=True))
    torch.testing.assert_close(narrow.items.id_emb.weight, before)


def test_both_stages_take_mask_history_from_the_training_config(teacher, student, text_emb):
    from training.teacher import teacher_loss

    for mask in (True, False):
        cfg = _config(teacher, text_emb, init=False)
        cfg["train"] = TrainConfig(mask_history=mask).model_dump()
        assert student_loss(student, cfg).mask_history is mask
        assert teacher_loss(teacher, {"train": cfg["train"]}).mask_history is mask
