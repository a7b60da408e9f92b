"""Training curves: the metrics that :func:`~dpm_core.training.train_vae` logs, one panel each."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..utils import non_negative_int
from ._common import panel_layout

__all__ = ["plot_training_curves"]

# Panel titles of the metrics that train_vae logs; other metrics are titled by their key.
_METRIC_TITLES = {
    "ELBO": "ELBO",
    "D": "distortion D",
    "R": "rate R",
    "L": "log-likelihood L (importance sampled)",
    "cv_loss": "control-variate loss",
    "loss": "training loss",
}
_METRICS_IN_NATS = ("ELBO", "D", "R", "L")


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_training_curves(log: Mapping[str, object],
                         metrics: Sequence[str] = ("ELBO", "D", "R", "L", "cv_loss"),
                         splits: Sequence[str] = ("training", "dev"),
                         figsize: Optional[tuple] = None,
                         smoothing: Optional[int] = None) -> Figure:
    """Plot the curves of a :func:`~dpm_core.training.train_vae` log, one panel per metric.

    A panel shows every split that logged the metric: ``"training"`` (per-step
    batch figures) as a thin, faint line with a moving average over it, and
    ``"dev"`` (periodic checks) with markers. Metrics that no split logged are left
    out, and so is a control-variate loss that is 0 throughout (pathwise
    gradients need no control variate): the default draws ELBO, D, R, L and,
    for score-function training, the control-variate loss. Panels fill rows of
    at most four (five panels: two rows of three).

    Args:
        log: maps ``"<split>.<metric>"`` to a list of ``(step, value)`` pairs;
            entries that are not lists (such as ``"time"``) are ignored.
        metrics: the metrics to draw, in panel order.
        splits: the splits to draw in each panel.
        figsize: figure size in inches (default: 4.2 by 3.6 inches per panel).
        smoothing: window (in logged points) of the moving average over the
            training curve; default ``len // 25`` (no average for short curves);
            0 or 1 draws none.

    Returns:
        The figure, with one axes per metric drawn.

    Raises:
        ValueError: if none of ``metrics`` is logged for any of ``splits``, or
            ``smoothing`` is negative.

    Example:
        >>> fig = plot_training_curves(log, metrics=("ELBO", "R"))
    """
    if not isinstance(log, Mapping):
        raise ValueError(f"log must be a dict from '<split>.<metric>' to (step, value) lists, "
                         f"got {type(log).__name__}")
    if smoothing is not None:
        non_negative_int("smoothing", smoothing)
    curves = {key: value for key, value in log.items()
              if isinstance(value, (list, tuple)) and len(value) > 0}
    # pathwise training logs a control-variate loss of exactly 0: nothing to look at
    for key in [k for k in curves if k.endswith(".cv_loss")]:
        if all(pair[1] == 0 for pair in curves[key]):
            del curves[key]
    present = [m for m in metrics if any(f"{s}.{m}" in curves for s in splits)]
    if not present:
        raise ValueError(f"log has none of the metrics {tuple(metrics)} for the splits "
                         f"{tuple(splits)}; its curves are {sorted(curves)}")

    nrows, ncols = panel_layout(len(present))
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (4.2 * ncols, 3.6 * nrows),
                             squeeze=False, layout="constrained")
    axes = axes.ravel()
    for ax in axes[len(present):]:
        ax.remove()
    for ax, metric in zip(axes, present):
        for i, split in enumerate(splits):
            key = f"{split}.{metric}"
            if key not in curves:
                continue
            points = np.asarray(curves[key], dtype=float)  # [T, 2]: step, value
            if points.ndim != 2 or points.shape[1] != 2:
                raise ValueError(f"log[{key!r}] must be a list of (step, value) pairs, got an "
                                 f"array of shape {points.shape}")
            steps, values = points[:, 0], points[:, 1]
            color = f"C{i}"
            if split == "training":
                ax.plot(steps, values, color=color, lw=0.7, alpha=0.35, label=split)
                window = len(values) // 25 if smoothing is None else smoothing
                if 1 < window <= len(values):
                    ax.plot(steps[window - 1:], _moving_average(values, window), color=color,
                            lw=1.5, label=f"{split}, moving average of {window}")
            else:
                ax.plot(steps, values, color=color, lw=1.2, marker="o", ms=3, label=split)
        ax.set_title(_METRIC_TITLES.get(metric, metric))
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric} (nats)" if metric in _METRICS_IN_NATS else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig
