"""PNG plots beside ``report.json``: training curves, and quality against scoring cost.

    plot_training_curves({"teacher": history, ...}, "out/training_curves.png")
    plot_quality_cost(report, "out/quality_cost.png")
"""

from __future__ import annotations

from pathlib import Path

try:
    import matplotlib
except ImportError as e:  # the `plots` extra
    raise ImportError("distilrec's PNG plots need matplotlib: pip install 'distilrec[plots]'") from e

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(curves: dict[str, list[dict]], path: str | Path) -> str:
    """Loss and validation NDCG@10 per epoch, one line per trained model."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in curves.items():
        epochs = [h["epoch"] + 1 for h in history]
        ax_loss.plot(epochs, [h["loss"] for h in history], marker=".", label=name)
        ax_val.plot(epochs, [h["val_ndcg@10"] for h in history], marker=".", label=name)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_val.set(title="validation NDCG@10", xlabel="epoch", ylabel="NDCG@10")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_quality_cost(report: dict, path: str | Path) -> str:
    """Test NDCG@10 against multiply-accumulates per candidate (log scale); baselines as lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in report["models"].items():
        if m.get("macs_per_candidate"):
            ax.scatter(m["macs_per_candidate"], m["ndcg@10"], s=40)
            ax.annotate(name, (m["macs_per_candidate"], m["ndcg@10"]), textcoords="offset points", xytext=(5, 5))
        else:
            ax.axhline(m["ndcg@10"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(name, (0.01, m["ndcg@10"]), xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(0, 3), color="grey")
    ax.set_xscale("log")
    ax.set(title=f"quality vs cost: {report['dataset']['name']}", xlabel="MACs per scored candidate",
           ylabel="test NDCG@10")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> str:
    """Write ``fig`` as PNG to a local path or any fsspec URI (``s3://…``)."""
    import fsspec

    path = str(path)
    if "://" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
