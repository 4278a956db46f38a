"""The pipeline's PNG plots render from a report and training histories."""

from __future__ import annotations

from distilrec.plots import plot_quality_cost, plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"


def test_training_curves_and_quality_cost_are_pngs(tmp_path):
    curves = {name: [{"epoch": e, "loss": 5.0 - e, "val_ndcg@10": 0.1 * e} for e in range(3)]
              for name in ("teacher", "student")}
    report = {"dataset": {"name": "toy"}, "models": {
        "popularity": {"ndcg@10": 0.05, "macs_per_candidate": None},
        "teacher": {"ndcg@10": 0.3, "macs_per_candidate": 30000.0},
        "student": {"ndcg@10": 0.28, "macs_per_candidate": 44.0},
    }}
    for path in (plot_training_curves(curves, tmp_path / "a" / "curves.png"),
                 plot_quality_cost(report, tmp_path / "cost.png")):
        data = open(path, "rb").read()
        assert data.startswith(PNG) and len(data) > 5000


def test_plots_go_to_any_fsspec_uri():
    import fsspec

    path = plot_training_curves({"teacher": [{"epoch": 0, "loss": 1.0, "val_ndcg@10": 0.1}]},
                                "memory://plots-test/out/curves.png")
    with fsspec.open(path, "rb") as f:
        assert f.read().startswith(PNG)
