"""loss_curve.png from the Trainer's log history (training loss per logging step, validation loss if any)."""

from __future__ import annotations

from pathlib import Path


def plot_loss(log_history: list[dict], path: str | Path) -> Path | None:
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
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
    ax.set_title("P-tuning v2 training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
