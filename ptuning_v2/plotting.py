"""loss_curve.png from the Trainer's log history: training loss per logging step, validation loss, and the
validation accuracy (label scoring, right-hand axis) with the best evaluated step marked."""

from __future__ import annotations

from pathlib import Path


def _series(log_history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in log_history if key in e and "step" in e]


def plot_loss(log_history: list[dict], path: str | Path, best_step: int | None = None) -> Path | None:
    train, evals, accuracy = (_series(log_history, k) for k in ("loss", "eval_loss", "eval_accuracy"))
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for points, label in ((train, "train loss"), (evals, "validation loss")):
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("P-tuning v2 training")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if accuracy:
        acc_ax = ax.twinx()
        handles += acc_ax.plot(*zip(*accuracy), color="tab:green", marker="o", markersize=3,
                               label="validation accuracy (%)")
        acc_ax.set_ylabel("accuracy (%)")
        labels.append("validation accuracy (%)")
    if best_step is not None:
        handles.append(ax.axvline(best_step, color="gray", linestyle="--"))
        labels.append(f"best checkpoint (step {best_step})")
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
