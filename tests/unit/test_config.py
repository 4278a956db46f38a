"""Typed model configs: strict, frozen, validated, and round-trip through JSON (the artifact format)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distilrec.config import DistillConfig, PipelineConfig, StudentConfig, TeacherConfig, TrainConfig


def test_json_round_trip_keeps_the_kind():
    for cfg in (TeacherConfig(n_items=10, text_dim=4, d_model=16), StudentConfig(n_items=10, text_dim=0)):
        back = type(cfg).model_validate_json(cfg.model_dump_json())
        assert back == cfg
    assert TeacherConfig(n_items=1, text_dim=0).kind == "teacher"
    assert StudentConfig(n_items=1, text_dim=0).kind == "student"


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="d_modle"):
        StudentConfig(n_items=10, text_dim=0, d_modle=8)


@pytest.mark.parametrize("bad", [{"n_items": 0}, {"text_dim": -1}, {"dropout": 1.0}, {"max_len": 0}])
def test_invalid_shapes_are_rejected(bad):
    with pytest.raises(ValidationError):
        TeacherConfig(**{"n_items": 10, "text_dim": 0, **bad})


def test_configs_are_frozen():
    cfg = StudentConfig(n_items=10, text_dim=0)
    with pytest.raises(ValidationError):
        cfg.d_model = 8


def test_distill_alpha_bounds():
    assert DistillConfig(alpha=0.0).alpha == 0.0
    with pytest.raises(ValidationError):
        DistillConfig(alpha=1.5)
    assert isinstance(DistillConfig(), TrainConfig)


def test_pipeline_config_defaults():
    cfg = PipelineConfig()
    assert cfg.encoder == "minilm"
    assert cfg.teacher == {} and cfg.student == {}
    assert cfg.student_without_teacher is True


def test_command_line_gpu_and_workers_apply_to_every_training_stage(tmp_path):
    from training.pipeline import load_config

    plain = load_config(None)
    assert not plain.teacher_train.use_gpu and plain.teacher_train.num_workers == 2
    gpu = load_config(None, use_gpu=True, workers=1)
    for stage in (gpu.teacher_train, gpu.distill):
        assert stage.use_gpu and stage.num_workers == 1
    assert gpu.distill.temperature == plain.distill.temperature  # nothing else changes
    yml = tmp_path / "c.yaml"
    yml.write_text("teacher_train: {epochs: 3, num_workers: 4}\ndistill: {alpha: 0.3}\n")
    mixed = load_config(str(yml), use_gpu=True)
    assert mixed.teacher_train.epochs == 3 and mixed.teacher_train.num_workers == 4 and mixed.teacher_train.use_gpu
    assert mixed.distill.alpha == 0.3 and mixed.distill.use_gpu


@pytest.mark.parametrize("instructions", [[], ["avx512_bf16"], ["avx512_bf16", "amx_bf16"], ["bf16"]])
def test_bf16_autocast_by_default_with_gpus_and_on_cpus_with_avx512_bf16(tmp_path, monkeypatch, instructions):
    import torch

    import training.loop
    from training.loop import step_autocast
    from training.pipeline import load_config

    monkeypatch.setattr(training.loop, "cpu_bf16_instructions", lambda: instructions)
    cpu = torch.device("cpu")
    x = torch.randn(4, 8)

    def matmul_dtype(tc: TrainConfig) -> torch.dtype:
        with step_autocast(tc, cpu):
            return (x @ x.T).dtype

    plain = load_config(None)
    assert plain.teacher_train.bf16 is None and plain.distill.bf16 is None
    # The CPU default: bf16 where the CPU has AVX-512 BF16 (measured), float32 elsewhere (Arm's bf16: not measured).
    cpu_default = torch.bfloat16 if "avx512_bf16" in instructions else torch.float32
    assert matmul_dtype(plain.teacher_train) == cpu_default and matmul_dtype(plain.distill) == cpu_default
    assert matmul_dtype(TrainConfig(use_gpu=True)) == torch.bfloat16  # GPUs: on by default
    assert matmul_dtype(TrainConfig(use_gpu=True, bf16=False)) == torch.float32  # … unless turned off
    asked = load_config(None, bf16=True)  # --bf16: on every CPU
    for stage in (asked.teacher_train, asked.distill):
        assert stage.bf16 is True and not stage.use_gpu and matmul_dtype(stage) == torch.bfloat16
    off = load_config(None, use_gpu=True, bf16=False)  # --no-bf16: float32 everywhere, GPUs too
    for stage in (off.teacher_train, off.distill):
        assert stage.bf16 is False and stage.use_gpu and matmul_dtype(stage) == torch.float32
    yml = tmp_path / "c.yaml"
    yml.write_text("teacher_train: {bf16: false}\n")
    one = load_config(str(yml))
    assert one.teacher_train.bf16 is False and one.distill.bf16 is None
    assert load_config(str(yml), bf16=True).teacher_train.bf16 is True  # the command line wins


@pytest.mark.parametrize("flag, want", [([], None), (["--bf16"], True), (["--no-bf16"], False)])
def test_the_pipeline_command_hands_bf16_to_every_training_stage(monkeypatch, flag, want):
    import training.pipeline
    from distilrec.cli import main

    seen = []
    monkeypatch.setattr(training.pipeline, "run_pipeline", lambda dataset, output, cfg, resume, force: seen.append(cfg))
    assert main(["pipeline", "--dataset", "synthetic", "--output", "o", *flag]) == 0
    assert seen[0].teacher_train.bf16 is want and seen[0].distill.bf16 is want


def test_pipeline_cli_names_a_bad_worker_count(capsys):
    from distilrec.cli import main

    assert main(["pipeline", "--dataset", "synthetic", "--output", "o", "--workers", "0"]) == 2
    assert "--workers 0" in capsys.readouterr().err
