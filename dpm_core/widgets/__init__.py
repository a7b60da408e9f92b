r"""Interactive views of a latent space: move a code z and watch the decoder answer.

Four views of a trained :class:`~dpm_core.nvil.NVIL` (or any model with the same
``gen_model`` / ``inf_model`` parts) for JupyterLab:

* :class:`LatentExplorer`: a slider per latent coordinate and, beside the decoded
  image, a 2-D *pad*: the encoded test set (the means of q(z|x)) that you click or
  drag on to pick a code. It shows the decoder mean E[x|z] or a draw x ~ p(x|z);
  for a mixture prior a selector jumps to a component's location and draws its
  spread.
* :class:`Interpolator`: two test images, their posterior means z_A and z_B, and a
  slider t that moves along the straight line (1 - t) z_A + t z_B or along the
  spherical path (slerp [1]) between them, with the path drawn in the pad.
* :class:`PosteriorView`: one test image, draws z_s ~ q(z|x), their reconstructions,
  and where they sit against the prior p(z).
* :class:`CodeExplorer`: for a discrete code (K bits, or L categorical variables of C
  classes, :mod:`dpm_core.discrete`), a toggle per bit or a class selector per variable;
  the decoded image, and a strip of what every single change would decode to (every
  one-bit flip of a page of bits, or every class of one variable), from one batched pass.

The pad is a 2-D plot of the latent plane: for K = 2 the latent itself; for K > 2
the plane of the first two principal components of the encoded test set (or of
z_0 and z_1 when there is no test set). Clicking at a point of the plane moves the
code within the plane and keeps its other coordinates.

Every control calls a plain method (``set_z``, ``pick``, ``set_component``,
``set_mode``, ``select``, ``set_t``, ``set_path``, ...), which updates the state and
the current image (``.image``, a tensor ``[C, H, W]``); the widgets only mirror that
state, so tests and scripts drive the views without a browser. The ipywidgets
container (``.widget``) is built on first use. Decoding runs under
``torch.no_grad()``, in evaluation mode (the model's mode comes back after), on the
model's device.

Displaying a view (the last expression of a cell, or ``display(view)``) shows the
live widget in JupyterLab, together with a static PNG that viewers without the
widget state (exported HTML) show instead. Where no kernel can run widgets, only the
static PNG is shown; while nbgrader grades a notebook, only a line of text (the grader
draws no figure: under grading budgets it would show a barely trained model). Never an
exception.
The pad needs ``ipympl`` to be clickable; without it the pad is a picture and the
sliders do the work.

Example:
    >>> explorer = LatentExplorer(model, test_data, class_names=FASHION_MNIST_CLASSES)
    >>> explorer  # doctest: +SKIP
    >>> explorer.set_z(torch.tensor([0.5, -1.0]))
    >>> explorer.image.shape
    torch.Size([1, 28, 28])

References:
    [1] White (2016). Sampling Generative Networks. arXiv:1609.04468.
"""

from .codes import CodeExplorer
from .explorer import LatentExplorer
from .geometry import lerp, slerp
from .interpolator import Interpolator
from .posterior import PosteriorView

__all__ = ["LatentExplorer", "Interpolator", "PosteriorView", "CodeExplorer", "lerp", "slerp"]
