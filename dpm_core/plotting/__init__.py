"""Figures for the course notebooks: image grids, training curves and latent spaces.

Every function returns a matplotlib object (an ``Axes`` or a ``Figure``) and never
calls ``plt.show()``: the caller shows it (a notebook does so by itself) or saves
it. Functions that take an ``ax`` draw into it; without one they make a new figure
with a size that suits a notebook cell.

Images are tensors ``[N, C, H, W]`` (or ``[S, B, C, H, W]``, flattened to
``S * B`` images) with C = 1 (grey) or 3 (colour), either floats in [0, 1] or
``uint8`` in 0..255; they may live on any device. Functions that take a model
expect an :class:`~dpm_core.nvil.NVIL`: ``model.gen_model`` is p(z) p(x|z) and
``model.inf_model(x)`` returns q(z|x). They run it under ``torch.no_grad()`` in
evaluation mode and give it back in the mode they found it in.

Modules
-------
=======  ==================================================================
images   :func:`image_grid`, :func:`plot_images`, :func:`as_images`
curves   :func:`plot_training_curves`
models   :func:`inspect_lvm`, :func:`save_samples_and_reconstructions`
latents  :func:`plot_latent_scatter`, :func:`plot_latent_grid`,
         :func:`plot_prior_samples_hist`, :data:`FASHION_MNIST_CLASSES`
=======  ==================================================================
"""

from .curves import plot_training_curves
from .images import as_images, image_grid, plot_images
from .latents import (
    FASHION_MNIST_CLASSES,
    plot_latent_grid,
    plot_latent_scatter,
    plot_prior_samples_hist,
)
from .models import inspect_lvm, save_samples_and_reconstructions

__all__ = [
    "FASHION_MNIST_CLASSES",
    "image_grid",
    "plot_images",
    "plot_training_curves",
    "inspect_lvm",
    "save_samples_and_reconstructions",
    "plot_latent_scatter",
    "plot_latent_grid",
    "plot_prior_samples_hist",
    "as_images",
]
