"""Figures of what a latent variable model generates, next to data and reconstructions.

Functions here take an :class:`~dpm_core.nvil.NVIL`: ``model.gen_model`` is
p(z) p(x|z) and ``model.inf_model(x)`` returns q(z|x). They run it under
``torch.no_grad()`` in evaluation mode and give it back in the mode they found it in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..flows import central_code
from ..utils import batch_of, evaluating, model_device, positive_int
from ._common import model_data_shape, show_grid
from .images import as_images, image_grid

__all__ = ["inspect_lvm", "save_samples_and_reconstructions"]


def _grids_figure(grids: Sequence[np.ndarray], titles: Sequence[str], width: float) -> Figure:
    """A column of image grids, each row as tall as its grid's aspect asks."""
    ratios = [g.shape[0] / g.shape[1] for g in grids]
    title_space = 0.45  # inches per row for the title
    height = width * sum(ratios) + title_space * len(grids)
    fig, axes = plt.subplots(len(grids), 1, figsize=(width, height), height_ratios=ratios,
                             layout="constrained", squeeze=False)
    for ax, grid, title in zip(axes[:, 0], grids, titles):
        show_grid(ax, grid, title)
    return fig


def inspect_lvm(model: nn.Module, x: Tensor, num_prior: int = 16, prior_draws: int = 4,
                device: Union[str, torch.device, None] = None) -> Figure:
    """Look at what a latent variable model generates, next to data and reconstructions.

    Four rows of images:

    1. prior samples: ``num_prior`` codes z ~ p(z), one per column, and
       ``prior_draws`` observations x ~ p(x|z) for each, one per row;
    2. the observations x;
    3. conditional samples x' ~ p(x|z) with z ~ q(z|x), one per observation;
    4. reconstructions: the decoder mean E[x|z] at the mean of q(z|x).

    Args:
        model: an :class:`~dpm_core.nvil.NVIL` model.
        x: observations ``[B] + data_shape`` (e.g. a dev batch).
        num_prior: codes to draw from the prior.
        prior_draws: observations to draw for each code.
        device: the model's device, where ``x`` is moved (default: found from the
            model's parameters). The model itself is not moved.

    Returns:
        The figure.

    Raises:
        ValueError: if ``x`` does not have the model's data shape, or a count is
            not a positive int.
    """
    num_prior = positive_int("num_prior", num_prior)
    prior_draws = positive_int("prior_draws", prior_draws)
    data_shape = model_data_shape(model)
    batch_of("x", x, data_shape)
    device = torch.device(device) if device is not None else model_device(model)
    x = x.to(device)
    with evaluating(model):
        prior = model.sample(num_prior, prior_draws, oversample=True)  # [S, B] + data_shape
        cond = model.cond_sample(x)  # [B] + data_shape
        recon = model.gen_model.obs_model(central_code(model.inf_model(x))[0]).mean  # [B] + data_shape
    grids = [image_grid(as_images(prior, data_shape), nrow=num_prior),
             image_grid(as_images(x, data_shape)),
             image_grid(as_images(cond, data_shape)),
             image_grid(as_images(recon, data_shape))]
    titles = [f"prior samples: {num_prior} codes z ~ p(z) (columns), "
              f"{prior_draws} draws x ~ p(x|z) each (rows)",
              "observations x",
              "conditional samples x' ~ p(x|z), z ~ q(z|x)",
              "reconstructions: decoder mean E[x|z] at z = mean of q(z|x)"]
    return _grids_figure(grids, titles, width=10.0)


def save_samples_and_reconstructions(model: nn.Module, x: Tensor, path: Union[str, Path],
                                     num_samples: int = 32) -> Path:
    """Save a PNG of decoded prior samples, test images and their reconstructions.

    Rows: (1) decoder means E[x|z] of ``num_samples`` codes z ~ p(z); (2) the
    images x; (3) their reconstructions, E[x|z] at z = mean of q(z|x). Decoder
    means rather than draws from p(x|z), because they show what the decoder has
    learnt without the pixel noise of a Bernoulli draw.

    Args:
        model: an :class:`~dpm_core.nvil.NVIL` model.
        x: images ``[B] + data_shape``; moved to the model's device.
        path: the PNG to write; missing parent folders are created.
        num_samples: codes to draw from the prior.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``x`` does not have the model's data shape or
            ``num_samples`` is not a positive int.
    """
    num_samples = positive_int("num_samples", num_samples)
    data_shape = model_data_shape(model)
    batch_of("x", x, data_shape)
    path = Path(path)
    x = x.to(model_device(model))
    with evaluating(model):
        z = model.gen_model.prior((num_samples,)).sample()  # [S, K]
        samples = model.gen_model.obs_model(z).mean  # [N] + data_shape
        recon = model.gen_model.obs_model(central_code(model.inf_model(x))[0]).mean  # [B] + data_shape
    grids = [image_grid(as_images(samples, data_shape)),
             image_grid(as_images(x, data_shape)),
             image_grid(as_images(recon, data_shape))]
    titles = ["prior samples: decoder mean E[x|z], z ~ p(z)",
              "test images x",
              "reconstructions: E[x|z] at z = mean of q(z|x)"]
    fig = _grids_figure(grids, titles, width=8.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
