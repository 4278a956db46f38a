"""``distilrec bench step``: both loss implementations time the same training step."""

from __future__ import annotations

import json
import os

import pytest
import torch

from distilrec import losses
from distilrec.bench.step import COMPARISONS, IMPLEMENTATIONS, _batch, _loss, _stages, run_step_bench, step_table
from distilrec.cli import main
from distilrec.config import PipelineConfig
from training.loop import cpu_bf16_instructions

SMALL = PipelineConfig(teacher={"d_model": 16, "max_len": 12}, student={"d_model": 16, "max_len": 6})


def test_each_stage_has_the_same_loss_with_either_implementation():
    # The comparison is fair only if the swapped-in implementation computes the same step.
    for stage, (wrapper, length) in _stages(SMALL, n_items=40, text_dim=8, seed=0).items():
        inputs, targets, stamps = _batch(40, 4, length, seed=1)
        wrapper.eval()
        got = {}
        for name in IMPLEMENTATIONS:
            with _loss(name):
                got[name] = wrapper(inputs, targets, stamps)
        torch.testing.assert_close(got["written-out"], got["autograd"], msg=stage)


def test_the_bf16_way_is_the_same_step_in_a_coarser_arithmetic():
    # float32 against bf16 autocast: the same loss to bf16's precision, yet not the same number (bf16 did run).
    for stage, (wrapper, length) in _stages(SMALL, n_items=40, text_dim=8, seed=0).items():
        inputs, targets, stamps = _batch(40, 4, length, seed=1)
        wrapper.eval()
        got = {}
        for name, way in COMPARISONS["bf16"].items():
            with way():
                got[name] = wrapper(inputs, targets, stamps).float()
        torch.testing.assert_close(got["bf16-autocast"], got["float32"], rtol=2e-2, atol=1e-3, msg=stage)
        assert got["bf16-autocast"] != got["float32"], stage  # a different arithmetic, not the same one twice


def test_the_swap_is_undone_even_when_the_step_fails():
    with pytest.raises(RuntimeError):
        with _loss("autograd"):
            assert losses.softmax_loss is losses.softmax_loss_reference
            raise RuntimeError("a failing step")
    assert losses.softmax_loss is IMPLEMENTATIONS["written-out"]


def test_run_step_bench_times_every_stage_with_both_losses():
    result = run_step_bench(items=40, text_dim=8, steps=2, block=1, cfg=SMALL)
    assert result["users_per_step"] == 16 and result["steps"] == 2
    assert set(result["stages"]) == {"teacher", "student", "student_no_distill"}
    for r in result["stages"].values():
        ms = r["ms_per_step"]
        assert ms["written-out"] > 0 and ms["autograd"] > 0
        assert r["autograd_over_written_out"] == pytest.approx(ms["autograd"] / ms["written-out"], rel=0.01)
    assert "| student_no_distill |" in step_table(result)
    with pytest.raises(ValueError, match="steps=0"):
        run_step_bench(steps=0)


def test_run_step_bench_times_float32_against_bf16_autocast_and_names_the_cpus_bf16():
    result = run_step_bench(items=40, text_dim=8, steps=2, block=1, cfg=SMALL, compare="bf16")
    assert result["compare"] == "bf16" and result["cpu_bf16"] == cpu_bf16_instructions()
    for r in result["stages"].values():
        ms = r["ms_per_step"]
        assert ms["float32"] > 0 and ms["bf16-autocast"] > 0
        assert r["float32_over_bf16_autocast"] == pytest.approx(ms["float32"] / ms["bf16-autocast"], rel=0.01)
    table = step_table(result)
    assert "| stage | ms / step, bf16 autocast | ms / step, float32 | float32 / bf16 autocast |" in table
    assert "bf16 instructions: " in table
    with pytest.raises(ValueError, match="compare='fp8'"):
        run_step_bench(compare="fp8")


def test_bench_step_command_writes_its_tables_and_refuses_bad_values(tmp_path, capsys, monkeypatch):
    import distilrec.bench.step as step

    real = step.run_step_bench
    monkeypatch.setattr(step, "run_step_bench", lambda **kw: real(**{**kw, "text_dim": 8, "cfg": SMALL}))
    out = tmp_path / "b"
    assert main(["bench", "step", "--output", str(out), "--items", "40", "--steps", "1", "--block", "1"]) == 0
    saved = json.loads((out / "step.json").read_text())
    assert saved["command"].startswith("distilrec bench step") and saved["items"] == 40
    assert (out / "step.md").read_text() in capsys.readouterr().out
    assert main(["bench", "step", "--output", str(out), "--items", "40", "--steps", "1", "--block", "1",
                 "--compare", "bf16"]) == 0
    assert json.loads((out / "step.json").read_text())["compare"] == "bf16"
    capsys.readouterr()
    assert main(["bench", "step", "--output", str(out), "--block", "0"]) == 2
    assert "--block 0: must be at least 1" in capsys.readouterr().err


def test_the_command_turns_pytorchs_huge_pages_on_unless_the_environment_says_otherwise(monkeypatch):
    from distilrec.cli import huge_pages_default

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    huge_pages_default()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"  # the local Ray instance's processes inherit it
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    huge_pages_default()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
