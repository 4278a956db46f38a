"""Where the pipeline writes: a local folder or any fsspec URI (``s3://…``; ``memory://`` here), and
the run's own account of its time (``report["run"]``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fsspec
import pytest
import torch

from distilrec.evaluate import time_line
from training.loop import TrainOutput
from training.pipeline import (WRITE_CHECK, OutputLocationError, StageClock, output_locations, run_summary,
                               training_storage)


def test_local_output_is_made_absolute_and_is_its_own_work_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, work = output_locations("runs/out")
    assert out == str(tmp_path / "runs" / "out") and work == tmp_path / "runs" / "out" and work.is_dir()


def test_uri_output_stays_a_uri_with_a_local_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILREC_CACHE_DIR", str(tmp_path / "cache"))
    out, work = output_locations("memory://bucket/models/")
    assert out == "memory://bucket/models"
    assert work.is_dir() and tmp_path / "cache" in work.parents
    assert output_locations("memory://bucket/models")[1] == work  # the same URI, the same cache


def test_the_work_folder_of_a_uri_follows_xdg_cache_home(memory_uri, tmp_path, monkeypatch):
    """The chart's pods have a read-only root filesystem and XDG_CACHE_HOME=/tmp/cache: ~/.cache is not
    writable there, so the default must follow XDG_CACHE_HOME."""
    monkeypatch.delenv("DISTILREC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _, work = output_locations(f"{memory_uri}/out")
    assert work.is_dir() and (tmp_path / "xdg" / "distilrec" / "work") in work.parents
    (tmp_path / "plain").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "plain"))
    with pytest.raises(OutputLocationError, match="cannot make the local work folder .* set DISTILREC_CACHE_DIR"):
        output_locations(f"{memory_uri}/out")


def test_a_uri_is_tried_with_a_write_that_leaves_nothing_behind(memory_uri, tmp_path, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    written = []
    pipe_file = MemoryFileSystem.pipe_file
    monkeypatch.setattr(MemoryFileSystem, "pipe_file",
                        lambda self, path, *a, **kw: written.append(path) or pipe_file(self, path, *a, **kw))
    monkeypatch.setenv("DISTILREC_CACHE_DIR", str(tmp_path / "cache"))
    out, _ = output_locations(f"{memory_uri}/out")
    fs, root = fsspec.core.url_to_fs(out)
    assert out == f"{memory_uri}/out" and written == [f"{root}/{WRITE_CHECK}"]
    assert not fs.exists(f"{root}/{WRITE_CHECK}")


@pytest.mark.parametrize("output, message", [
    ("nosuch://bucket/out", "cannot write there (ValueError: Protocol not known: nosuch)"),
    ("{file}/out", "cannot make the folder {file}/out"),  # a folder inside a plain file
])
def test_an_output_that_cannot_be_written_is_refused_at_once(tmp_path, output, message):
    (tmp_path / "plain").write_text("not a folder")
    file = tmp_path / "plain"
    with pytest.raises(OutputLocationError) as e:
        output_locations(output.format(file=file))
    assert message.format(file=file) in str(e.value)


def test_the_cli_names_a_bad_output_before_it_reads_the_dataset(capsys):
    from distilrec.cli import main

    assert main(["pipeline", "--dataset", "movielens:/nonexistent", "--output", "nosuch://bucket/out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distilrec pipeline: --output 'nosuch://bucket/out': cannot write there")
    assert "--dataset" not in err


def _run(vals: list[float], secs: list[float], bf16: list[bool] | None = None) -> TrainOutput:
    history = [{"epoch": i, "loss": 1.0, "val_ndcg@10": v, "epoch_s": s, "bf16": b}
               for i, (v, s, b) in enumerate(zip(vals, secs, bf16 or [False] * len(vals)))]
    return TrainOutput(torch.nn.Linear(1, 1), history, max(history, key=lambda h: h["val_ndcg@10"]), "ckpt")


def test_the_run_summary_times_each_stage_and_sums_up_the_epochs():
    clock = StageClock()
    with clock.stage("baselines"):
        time.sleep(0.05)
    with pytest.raises(RuntimeError), clock.stage("teacher"):  # a failing stage still has its time
        raise RuntimeError("worker lost")
    runs = {"teacher": _run([0.1, 0.3, 0.2], [4.0, 6.0, 5.0]),
            "student": _run([0.2, 0.1], [2.0, 3.0], bf16=[False, True])}  # resumed under bf16 autocast
    run = run_summary(clock, runs, resume=False)
    assert list(run["stage_s"]) == ["baselines", "teacher"]
    assert run["stage_s"]["baselines"] >= 0.05 - 1e-9
    assert sum(run["stage_s"].values()) <= run["wall_s"] + 0.05 * len(run["stage_s"])  # each rounded to 0.1 s
    assert run["epochs"] == {
        "teacher": {"trained": 3, "best": 1, "best_val_ndcg@10": 0.3, "median_epoch_s": 5.0, "bf16_epochs": 0},
        "student": {"trained": 2, "best": 0, "best_val_ndcg@10": 0.2, "median_epoch_s": 2.5, "bf16_epochs": 1}}
    assert run["resumed"] is False and run["started"].endswith("Z")
    assert list(run["peak_rss_mib"]) == ["baselines", "teacher"]  # each stage's peak memory, failed ones too
    assert all(m["process_mib"] > 0 for m in run["peak_rss_mib"].values())


def test_each_stage_reports_its_own_peak_memory():
    clock = StageClock()
    with clock.stage("big"):
        block = bytearray(96 * 2 ** 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    del block
    with clock.stage("small"):
        pass
    big, small = clock.peak_rss_mib["big"], clock.peak_rss_mib["small"]
    assert big["process_mib"] >= small["process_mib"] + 64 or not Path("/proc/self/clear_refs").exists()
    assert big["tree_mib"] is None or big["tree_mib"] >= big["process_mib"] - 1


def test_the_time_line_gives_minutes_for_long_stages_and_seconds_for_short_ones():
    run = {"wall_s": 1455.0, "stage_s": {"text_embeddings": 54.2, "teacher": 502.0, "ray_start": 1.4}}
    assert time_line(run) == "time: 24.2 min in all: text embeddings 54 s, teacher 8.4 min, ray start 1 s"
    run["epochs"] = {"teacher": {"trained": 40, "bf16_epochs": 40}, "student": {"trained": 30, "bf16_epochs": 0}}
    assert time_line(run).endswith("ray start 1 s; bf16 autocast: teacher")
    run["epochs"]["teacher"]["bf16_epochs"] = 0
    assert time_line(run).endswith("ray start 1 s")  # float32 throughout: nothing to say


def test_the_cli_names_the_option_behind_each_refusal(tmp_path, monkeypatch, capsys):
    """A dataset that cannot be read or split is --dataset's fault, an encoder that cannot be loaded is
    the configuration's; any other error of a run is not blamed on either."""
    import training.pipeline
    from distilrec.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "--dataset", "synthetic:users=1,items=2", "--output", "o"]) == 2
    assert capsys.readouterr().err.startswith("distilrec pipeline: --dataset 'synthetic:users=1,items=2': dataset ")

    (tmp_path / "c.yaml").write_text("encoder: /no/such/encoder\n")
    assert main(["pipeline", "--dataset", "synthetic:users=30,items=10", "--output", "o", "--config", "c.yaml"]) == 2
    assert capsys.readouterr().err == ("distilrec pipeline: --config 'c.yaml': encoder: cannot load the text "
                                       "encoder '/no/such/encoder': no such folder\n")

    # bench train reads its data and encoder the same way, and refuses them before Ray's start
    assert main(["bench", "train", "--dataset", "synthetic:users=1,items=2", "--output", "b"]) == 2
    assert capsys.readouterr().err.startswith("distilrec bench train: --dataset 'synthetic:users=1,items=2': ")
    assert main(["bench", "train", "--dataset", "synthetic:users=30,items=10", "--encoder", "./nowhere",
                 "--output", "b"]) == 2
    assert capsys.readouterr().err == ("distilrec bench train: --encoder './nowhere': cannot load the text encoder "
                                       "'./nowhere': no such folder\n")

    def broken(*args, **kwargs):
        raise ValueError("a bug, not the dataset")

    monkeypatch.setattr(training.pipeline, "item_embeddings", broken)
    with pytest.raises(ValueError, match="a bug, not the dataset"):
        main(["pipeline", "--dataset", "synthetic:users=30,items=10", "--output", "o"])
    assert "--dataset" not in capsys.readouterr().err


def _identity(items: int = 20, layers: int = 2) -> dict:
    from distilrec.config import StudentConfig, TeacherConfig
    from distilrec.data import load_dataset
    from training.pipeline import run_identity

    ds = load_dataset(f"synthetic:users=30,items={items}")
    return run_identity(ds, "tiny", 32, TeacherConfig(n_items=items, text_dim=32, n_layers=layers),
                        StudentConfig(n_items=items, text_dim=32))


def test_a_resumed_run_must_have_the_data_and_shapes_of_the_run_it_continues(memory_uri):
    from training.pipeline import RUN_FILE, ResumeMismatchError

    out = f"{memory_uri}/resume"
    first = training_storage(out, resume=False, identity=_identity())
    assert first.startswith(f"{out}/ray/run-")
    assert fsspec.open(f"{out}/ray/LATEST_RUN", "rb").open().read().decode() == first.rsplit("/", 1)[1]
    fs, root = fsspec.core.url_to_fs(f"{first}/{RUN_FILE}")
    assert json.loads(fs.cat_file(root))["dataset"]["items"] == 20
    assert training_storage(out, resume=True, identity=_identity()) == first
    with pytest.raises(ResumeMismatchError) as e:
        training_storage(out, resume=True, identity=_identity(items=25))
    assert str(e.value).startswith(f"the latest run ({first}) trained with another dataset: interactions ")
    assert "items 20 → 25" in str(e.value)
    assert "teacher" not in str(e.value)  # the catalogue size is the dataset's difference, not the model's
    with pytest.raises(ResumeMismatchError, match=r"another teacher: n_layers 2 → 3\. .*without --resume"):
        training_storage(out, resume=True, identity=_identity(layers=3))
    fs.rm_file(root)  # a run from before the record existed is resumed unchecked
    assert training_storage(out, resume=True, identity=_identity(items=25)) == first


def test_the_cli_refuses_a_resume_on_other_data_before_any_training(tmp_path, monkeypatch, capsys):
    from distilrec.cli import main

    monkeypatch.chdir(tmp_path)
    training_storage(str(tmp_path / "o"), resume=False, identity=_identity())
    (tmp_path / "c.yaml").write_text("encoder: tiny\n")
    assert main(["pipeline", "--dataset", "synthetic:users=30,items=10", "--output", "o", "--config", "c.yaml",
                 "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the tiny encoder's progress bars
    assert err.startswith(f"distilrec pipeline: --resume: the latest run ({tmp_path / 'o'}/ray/run-")
    assert "another dataset: interactions " in err
    assert err.endswith("items 20 → 10. Its checkpoints cannot continue this training: run without --resume "
                        "to start a new run")
    assert "another encoder" not in err and "teacher" not in err
