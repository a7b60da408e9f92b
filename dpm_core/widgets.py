r"""Interactive views of a latent space: move a code z and watch the decoder answer.

Three views of a trained :class:`~dpm_core.nvil.NVIL` (or any model with the same
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
widget state (exported HTML) show instead. While nbgrader grades a notebook, or
where no kernel can run widgets, only the static PNG is shown: never an exception.
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

from __future__ import annotations

import base64
import io
import math
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributions as td
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from PIL import Image as PILImage
from torch import Tensor, nn

from .data import ImageData
from .grading import grading_mode
from .plotting import _as_images, _evaluating, _model_device, image_grid, plot_latent_scatter

__all__ = ["LatentExplorer", "Interpolator", "PosteriorView", "lerp", "slerp"]

_MODES = ("mean", "sample")
_PATHS = ("linear", "spherical")
_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_MARKER_COLOUR = "#d62728"
_PATH_COLOUR = "#111111"
_SAMPLE_COLOUR = "#ff7f0e"
# the ellipses drawn for Gaussians hold the points within 2 standard deviations
# (Mahalanobis): P(chi2_2 <= 4) = 1 - exp(-2) = 86% of a 2-D Gaussian's mass
_ELLIPSE_SD = 2.0
_ENCODE_BATCH = 500
_PAD_FIGSIZE = (6.2, 4.6)
_PAD_DPI = 80
_STATIC_DPI = 90
_PNG_COMPRESSION = 1  # zlib level: fast to encode, and the images are tiny anyway

ImagesLike = Union[Tensor, ImageData]


# ----------------------------------------------------------------------------- paths

def lerp(z_a: Tensor, z_b: Tensor, t: Union[float, Tensor]) -> Tensor:
    """The straight line between two codes: (1 - t) z_a + t z_b.

    Args:
        z_a: the code at t = 0, ``[K]``.
        z_b: the code at t = 1, ``[K]``.
        t: a float, or a tensor ``[T]`` of points along the path.

    Returns:
        ``[K]`` for a float t, ``[T, K]`` for a tensor.
    """
    t = torch.as_tensor(t, dtype=z_a.dtype, device=z_a.device)
    if t.dim() == 1:
        t = t[:, None]  # [T, 1]
    return (1 - t) * z_a + t * z_b


def slerp(z_a: Tensor, z_b: Tensor, t: Union[float, Tensor]) -> Tensor:
    """The spherical path between two codes (White 2016 [1]).

    slerp(z_a, z_b; t) = sin((1 - t) w) / sin(w) z_a + sin(t w) / sin(w) z_b, where w
    is the angle between z_a and z_b. Under a N(0, I) prior in K dimensions most of
    the mass lies near the sphere of radius sqrt(K), and the straight line between
    two codes cuts through its improbable inside; the spherical path keeps to the
    arc (for codes of equal norm, every point on it has that norm). Where the angle
    is 0 or pi (parallel codes, or a code at the origin) the arc is not defined and
    the straight line is returned.

    Args:
        z_a: the code at t = 0, ``[K]``.
        z_b: the code at t = 1, ``[K]``.
        t: a float, or a tensor ``[T]`` of points along the path.

    Returns:
        ``[K]`` for a float t, ``[T, K]`` for a tensor.
    """
    norms = z_a.norm() * z_b.norm()
    if norms <= 1e-12:
        return lerp(z_a, z_b, t)
    cos_w = (z_a @ z_b / norms).clamp(-1.0, 1.0)
    w = torch.arccos(cos_w)
    sin_w = torch.sin(w)
    if sin_w <= 1e-6:
        return lerp(z_a, z_b, t)
    t = torch.as_tensor(t, dtype=z_a.dtype, device=z_a.device)
    if t.dim() == 1:
        t = t[:, None]  # [T, 1]
    return (torch.sin((1 - t) * w) * z_a + torch.sin(t * w) * z_b) / sin_w


_PATH_FNS = {"linear": lerp, "spherical": slerp}


# ----------------------------------------------------------------------------- helpers

def _z_name(k: int) -> str:
    """z with a subscript, e.g. z₃."""
    return "z" + str(k).translate(_SUBSCRIPTS)


def _live_widgets_possible() -> bool:
    """Whether a widget front end can exist: an IPython kernel, ipywidgets, and no grading."""
    if grading_mode():
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU work on one intra-op thread inside the block, then restore the setting.

    Decoding one image (or a few) gains nothing from the thread pool, and on a busy
    2-core machine the pool's threads wait for each other: one update with the CNN
    decoder for 64x64 images took 130 ms on 2 threads and 16 ms on one
    (``benchmarks/widgets_latency.py``).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _to_uint8(image: Tensor) -> np.ndarray:
    """One image ``[C, H, W]`` with values in [0, 1] as uint8 ``[H, W]`` (grey) or ``[H, W, 3]``."""
    pixels = (image.detach().float().clamp(0.0, 1.0) * 255).round().to(torch.uint8).cpu().numpy()
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def _png(pixels: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of a uint8 array ``[H, W]`` or ``[H, W, 3]``, each pixel a scale x scale square."""
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="png", compress_level=_PNG_COMPRESSION)
    return buffer.getvalue()


def _grid_png(images: Tensor, nrow: int, width: int) -> bytes:
    """PNG of images ``[N, C, H, W]`` tiled by :func:`image_grid`, upscaled to about ``width`` px."""
    grid = image_grid(images, nrow=nrow)  # [h, w, 3]
    pixels = (np.clip(grid, 0.0, 1.0) * 255).round().astype(np.uint8)
    return _png(pixels, scale=max(1, width // pixels.shape[1]))


def _figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def _check_choice(value: str, choices: tuple, name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_index(i, n: int, name: str) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n:
        raise ValueError(f"{name} must be an index in 0..{n - 1} (one of the {n} images), "
                         f"got {i!r}")
    return int(i)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _gaussian_components(dist: td.Distribution) -> list[tuple[float, Tensor, Tensor]]:
    """The diagonal Gaussians that make up a distribution over ``[K]`` with batch_shape ``()``.

    Returns:
        ``(weight, loc [K], scale [K])`` for ``Independent(Normal)`` (one, weight 1) or
        each component of a ``MixtureSameFamily`` of them; an empty list otherwise.
    """
    if isinstance(dist, td.MixtureSameFamily):
        weights = dist.mixture_distribution.probs.reshape(-1)  # [C]
        comps = dist.component_distribution
        base = comps.base_dist if isinstance(comps, td.Independent) else comps
        if not isinstance(base, td.Normal):
            return []
        locs, scales = base.loc.reshape(len(weights), -1), base.scale.reshape(len(weights), -1)
        return [(float(w), loc.detach().cpu(), scale.detach().cpu())
                for w, loc, scale in zip(weights, locs, scales)]
    base = dist.base_dist if isinstance(dist, td.Independent) else dist
    if isinstance(base, td.Normal):
        return [(1.0, base.loc.detach().reshape(-1).cpu(), base.scale.detach().reshape(-1).cpu())]
    return []


def _nearest(points: Tensor, point: Tensor) -> int:
    """The index of the row of ``points`` ``[N, 2]`` closest to ``point`` ``[2]``."""
    return int(((points - point) ** 2).sum(-1).argmin())


def _vector_text(v: Tensor, max_entries: int = 4) -> str:
    values = ", ".join(f"{float(a):.2f}" for a in v[:max_entries])
    return f"({values}{', …' if len(v) > max_entries else ''})"


# ----------------------------------------------------------------------------- the plane

class _Plane:
    """A 2-D plane of the latent space: where the pad's points live.

    Either two coordinate axes (``dims``) or an affine plane ``centre + basis @ uv``
    with an orthonormal basis ``[K, 2]`` (principal components).
    """

    def __init__(self, K: int, dims: Optional[tuple] = (0, 1), centre: Optional[Tensor] = None,
                 basis: Optional[Tensor] = None, names: tuple = ("", "")):
        self.K, self.dims, self.centre, self.basis, self.names = K, dims, centre, basis, names

    @classmethod
    def fit(cls, codes: Optional[Tensor], K: int) -> "_Plane":
        """The latent itself for K = 2; the principal plane of ``codes`` for K > 2."""
        if K == 2 or codes is None or codes.shape[0] < 3:
            return cls(K, dims=(0, 1), names=(_z_name(0), _z_name(1)))
        centre = codes.mean(0)  # [K]
        # principal directions: right singular vectors of the centred codes
        _, _, vh = torch.linalg.svd(codes - centre, full_matrices=False)
        basis = vh[:2].T.contiguous()  # [K, 2]
        # fix each direction's sign (SVD's is arbitrary): largest entry positive
        signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
        return cls(K, dims=None, centre=centre, basis=basis * signs,
                   names=("PC 1 of the codes", "PC 2 of the codes"))

    def project(self, z: Tensor) -> Tensor:
        """Coordinates ``[..., 2]`` in the plane of codes ``[..., K]`` (orthogonal projection)."""
        if self.dims is not None:
            return z[..., list(self.dims)]
        return (z - self.centre.to(z)) @ self.basis.to(z)

    def lift(self, uv: Tensor, z: Tensor) -> Tensor:
        """The code whose projection is ``uv`` ``[2]`` and whose part off the plane is z's."""
        if self.dims is not None:
            z = z.clone()
            z[list(self.dims)] = uv.to(z)
            return z
        return z + self.basis.to(z) @ (uv.to(z) - self.project(z))

    def covariance(self, scale: Tensor) -> Tensor:
        """The ``[2, 2]`` covariance in the plane of a Gaussian with diagonal scales ``[K]``."""
        if self.dims is not None:
            return torch.diag(scale[list(self.dims)] ** 2)
        return self.basis.T @ torch.diag(scale ** 2) @ self.basis


def _move_ellipse(patch: Ellipse, centre_uv: Tensor, cov: Tensor) -> None:
    """Give an ellipse patch the centre and shape of :func:`_ellipse`."""
    target = _ellipse(centre_uv, cov)
    patch.set_center(target.get_center())
    patch.set_width(target.get_width())
    patch.set_height(target.get_height())
    patch.set_angle(target.get_angle())


def _ellipse(centre_uv: Tensor, cov: Tensor, **kwargs) -> Ellipse:
    """The 2-sd ellipse of a 2-D Gaussian with covariance ``cov``, as a matplotlib patch."""
    values, vectors = torch.linalg.eigh(cov.double())  # ascending
    width, height = (2 * _ELLIPSE_SD * values.clamp(min=0).sqrt().flip(0)).tolist()
    angle = math.degrees(math.atan2(float(vectors[1, 1]), float(vectors[0, 1])))
    return Ellipse(tuple(centre_uv.tolist()), width, height, angle=angle, **kwargs)


# ----------------------------------------------------------------------------- the pad

class _Pad:
    """The pad: a matplotlib figure of the latent plane, live under ipympl.

    ``draw(ax)`` draws the fixed content (the codes, the prior) and returns the
    *overlays*, the artists that move (markers, paths, ellipses). Under ipympl the
    canvas is a widget, clicks and drags call ``on_pick(uv)``, and an update redraws
    only the overlays over a saved background (blitting), so that ipympl sends the
    browser a small PNG of the pixels that changed; the layout is fixed after the
    first one, for the same reason. Without ipympl the pad is a picture
    (``ipywidgets.Image``), rendered again after each change.

    Args:
        draw: draws into the axes, returns the overlay artists.
        on_pick: called with a point ``[2]`` of the plane on a click or drag.
        legend_outside: whether ``draw`` puts a legend to the right of the axes
            (the figure's height is chosen so that the equal-aspect axes fill it).
    """

    def __init__(self, draw: Callable[[Axes], list], on_pick: Optional[Callable[[Tensor], None]],
                 legend_outside: bool = False):
        import ipywidgets as w

        self.figure = Figure(figsize=_PAD_FIGSIZE, dpi=_PAD_DPI, layout="constrained")
        self.ax = self.figure.add_subplot()
        self.overlays = list(draw(self.ax))
        self._fit_height(legend_outside)
        self.figure.get_layout_engine().execute(self.figure)
        self.figure.set_layout_engine("none")
        self.on_pick = on_pick
        self._dragging = False
        self._background = None
        self.canvas = _interactive_canvas(self.figure)
        if self.canvas is not None:
            for artist in self.overlays:
                artist.set_animated(True)
            self.canvas.mpl_connect("draw_event", self._on_draw)
            self.canvas.mpl_connect("button_press_event", self._on_press)
            self.canvas.mpl_connect("motion_notify_event", self._on_motion)
            self.canvas.mpl_connect("button_release_event", self._on_release)
            self.widget = self.canvas
        else:
            self.widget = w.Image(value=_figure_png(self.figure), format="png")
        self.widget.add_class("dpm-pad")

    def _fit_height(self, legend_outside: bool) -> None:
        """Choose the figure's height so that the axes, one unit as long on both, fill it."""
        (x0, x1), (y0, y1) = self.ax.get_xlim(), self.ax.get_ylim()
        width, height = self.figure.get_size_inches()
        # inches left for the axes beside the tick labels (and the legend)
        axes_width = width - (2.3 if legend_outside else 0.8)
        height = axes_width * abs(y1 - y0) / max(abs(x1 - x0), 1e-9) + 0.8
        self.figure.set_size_inches(width, min(max(height, 3.2), 5.6))

    def refresh(self) -> None:
        """Show the overlays' new state."""
        if self.canvas is None:
            self.widget.value = _figure_png(self.figure)
        elif self._background is None:  # not drawn yet: the browser asks for a full draw
            self.canvas.draw_idle()
        else:
            self.canvas.restore_region(self._background)
            self._draw_overlays()
            self.canvas.blit(self.figure.bbox)

    def _draw_overlays(self) -> None:
        for artist in self.overlays:
            if artist.get_visible():
                self.figure.draw_artist(artist)

    def _on_draw(self, event) -> None:
        # a full draw (first show, resize, HiDPI change): it leaves the animated overlays
        # out, so save it as the background and put them on top
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_overlays()

    def _pick_event(self, event) -> None:
        if self.on_pick is not None and event.inaxes is self.ax and event.xdata is not None:
            self.on_pick(torch.tensor([event.xdata, event.ydata], dtype=torch.float32))

    def _on_press(self, event) -> None:
        if event.inaxes is self.ax:
            self._dragging = True
            self._pick_event(event)

    def _on_motion(self, event) -> None:
        if self._dragging:
            self._pick_event(event)

    def _on_release(self, event) -> None:
        self._dragging = False


def _interactive_canvas(fig: Figure):
    """An ipympl canvas widget for ``fig``, or None when ipympl is not installed."""
    try:
        from ipympl.backend_nbagg import Canvas, FigureManager
    except ImportError:
        return None
    canvas = Canvas(fig)
    with warnings.catch_warnings():
        # ipympl's toolbar passes the canvas on to traitlets, which warns about it
        warnings.simplefilter("ignore", DeprecationWarning)
        manager = FigureManager(canvas, num=0)
    # matplotlib's default key bindings would close the pad on "q", log-scale it on "l", ...
    for cid in (manager.key_press_handler_id, manager.button_press_handler_id):
        if cid is not None:
            canvas.mpl_disconnect(cid)
    canvas.header_visible = False
    canvas.footer_visible = False
    canvas.toolbar_visible = False
    canvas.resizable = False
    canvas._cursor = "crosshair"
    width, height = fig.get_size_inches() * fig.dpi
    canvas.layout = {"width": f"{width:.0f}px", "height": f"{height:.0f}px", "flex": "0 0 auto"}
    return canvas


# ----------------------------------------------------------------------------- base view

class _LatentView:
    """What the three views share: the model, the encoded data, the plane and the display.

    Args:
        model: an NVIL-like model: ``model.gen_model.obs_model(z)`` is p(x|z),
            ``model.gen_model.prior(batch_shape)`` is p(z), ``model.inf_model(x)`` is
            q(z|x), and the latent has shape ``(K,)``. A model with an
            ``as_latent_model()`` method is seen through it: a :class:`~dpm_core.vae.VAE`
            on 28 x 28 images (call :meth:`~dpm_core.vae.VAE.as_latent_model` yourself
            for other image shapes).
        x: test images ``[N, C, H, W]`` (model inputs) or an :class:`ImageData`; the
            first ``num_points`` are encoded.
        labels: class labels ``[N]`` (default: the ImageData's own, else none).
        class_names: names indexed by label, e.g. ``FASHION_MNIST_CLASSES``.
        device: where to decode; the model is moved there. Default: the model's device.
        num_points: at most this many images are encoded and drawn.
        z_range: the sliders and the pad span at least [-z_range, z_range], and
            further where the codes or the prior's components lie.
        image_size: the decoded image is shown about this many pixels wide
            (an integer multiple of the image width, so pixels stay square).
    """

    def __init__(self, model: nn.Module, x: Optional[ImagesLike] = None, labels=None,
                 class_names: Optional[Sequence[str]] = None,
                 device: Optional[Union[str, torch.device]] = None, num_points: int = 2000,
                 z_range: float = 3.0, image_size: int = 196):
        if hasattr(model, "as_latent_model"):
            model = model.as_latent_model()  # e.g. the seed-001 VAE, on 28 x 28 images
        if not hasattr(model, "gen_model") or not hasattr(model, "inf_model"):
            raise ValueError(f"model must be an NVIL-like module with gen_model and inf_model, "
                             f"or a dpm_core.vae.VAE, got {type(model).__name__}")
        num_points = _check_positive_int(num_points, "num_points")
        image_size = _check_positive_int(image_size, "image_size")
        if not float(z_range) > 0:
            raise ValueError(f"z_range must be positive, got {z_range!r}")
        latent_shape = tuple(model.gen_model.prior_net.outcome_shape)
        if len(latent_shape) != 1:
            raise NotImplementedError(f"the views need a latent of shape (K,), got {latent_shape}")
        self.model = model
        if device is not None and torch.device(device) != _model_device(model):
            model.to(device)
        self.device = _model_device(model)
        self.K = latent_shape[0]
        self.data_shape = tuple(model.gen_model.cpd_net.outcome_shape)
        # [1, C, H, W]: checks that the decoder's outputs can be shown as images
        blank = _as_images(torch.zeros(self.data_shape), self.data_shape)  # [1, C, H, W]
        self.image_shape = tuple(blank.shape[1:])
        if self.image_shape[0] not in (1, 3):
            raise NotImplementedError(f"only grey (C = 1) or colour (C = 3) images can be shown, "
                                      f"got C = {self.image_shape[0]}")
        self.scale = max(1, image_size // self.image_shape[-1])
        self.class_names = tuple(class_names) if class_names is not None else None
        self.x, self.labels = self._take_data(x, labels, num_points)
        self.codes = self._encode(self.x) if self.x is not None else None  # [N, K] on the CPU
        self.plane = _Plane.fit(self.codes, self.K)
        self.low, self.high = self._bounds(float(z_range))  # [K] each
        self._widget = None
        self._pad: Optional[_Pad] = None
        self._syncing = False

    # data
    def _take_data(self, x, labels, num_points: int) -> tuple:
        if x is None:
            return None, None
        if isinstance(x, ImageData):
            images, own_labels = x[: min(num_points, len(x))]
            labels = own_labels if labels is None else labels
            x = images
        if not torch.is_tensor(x):
            raise ValueError(f"x must be a tensor [N] + {list(self.data_shape)} or an ImageData, "
                             f"got {type(x).__name__}")
        if x.dim() != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape \
                or x.shape[0] == 0:
            raise ValueError(f"x must have shape [N] + {list(self.data_shape)} (the model's data "
                             f"shape) with N >= 1, got {list(x.shape)}")
        n = min(num_points, x.shape[0])
        if labels is not None:
            labels = labels.cpu() if torch.is_tensor(labels) else torch.as_tensor(np.asarray(labels))
            if labels.dim() != 1 or labels.shape[0] < n:
                raise ValueError(f"labels must have shape [N] = [{x.shape[0]}], got "
                                 f"{list(labels.shape)}")
            labels = labels[:n].long()
        return x[:n].detach().to(self.device), labels

    def _encode(self, x: Tensor) -> Tensor:
        """The means of q(z|x) ``[N, K]``, on the CPU."""
        with _evaluating(self.model):
            means = [self.model.inf_model(chunk).mean for chunk in x.split(_ENCODE_BATCH)]
        return torch.cat(means).float().cpu()

    def _bounds(self, z_range: float) -> tuple[Tensor, Tensor]:
        """Slider ranges ``[K]``: +-z_range, widened to most codes and the prior's 2-sd boxes."""
        low = torch.full((self.K,), -z_range)
        high = torch.full((self.K,), z_range)
        if self.codes is not None:
            q = torch.quantile(self.codes, torch.tensor([0.005, 0.995]), dim=0)  # [2, K]
            low, high = torch.minimum(low, q[0]), torch.maximum(high, q[1])
        for _, loc, scale in self.prior_components():
            low = torch.minimum(low, loc - _ELLIPSE_SD * scale)
            high = torch.maximum(high, loc + _ELLIPSE_SD * scale)
        # round outwards to halves, for tidy slider ends
        return torch.floor(low * 2) / 2, torch.ceil(high * 2) / 2

    # the model
    def prior(self) -> td.Distribution:
        """p(z) with batch_shape ``()`` and event_shape ``(K,)``."""
        return self.model.gen_model.prior(())

    def prior_components(self) -> list[tuple[float, Tensor, Tensor]]:
        """``(weight, loc [K], scale [K])`` of the prior's Gaussian components (detached, CPU)."""
        with torch.no_grad():
            return _gaussian_components(self.prior())

    def decode(self, z: Tensor, mode: str = "mean") -> Tensor:
        """Decode codes ``[N, K]`` into images ``[N, C, H, W]`` on the CPU.

        Args:
            z: codes, on any device.
            mode: ``"mean"`` for the decoder mean E[x|z], ``"sample"`` for a draw x ~ p(x|z).
        """
        _check_choice(mode, _MODES, "mode")
        with _evaluating(self.model), _one_cpu_thread(self.device):
            px_z = self.model.gen_model.obs_model(z.to(self.device))  # batch_shape [N]
            x = px_z.mean if mode == "mean" else px_z.sample()
        return _as_images(x, self.data_shape).float().cpu()

    def _plane_limits(self) -> tuple[tuple, tuple]:
        """The pad's x and y limits."""
        corners = torch.stack([self.low, self.high])  # [2, K]
        if self.plane.dims is not None:
            lim = corners[:, list(self.plane.dims)]  # [2, 2]
        else:
            points = self.plane.project(self.codes)  # [N, 2]
            q = torch.quantile(points, torch.tensor([0.005, 0.995]), dim=0)
            lim = torch.stack([q[0] - 0.5, q[1] + 0.5])
        return tuple(lim[:, 0].tolist()), tuple(lim[:, 1].tolist())

    def _draw_codes(self, ax: Axes, alpha: float = 0.6, s: float = 8, legend: bool = True,
                    points: bool = True) -> None:
        """The encoded test set in the plane, coloured by class; axes and limits set."""
        if self.codes is not None and points:
            uv = self.plane.project(self.codes)
            if self.labels is not None:
                plot_latent_scatter(uv, self.labels, class_names=self.class_names, ax=ax,
                                    alpha=alpha, s=s)
                if not legend and ax.get_legend() is not None:
                    ax.get_legend().remove()
            else:
                ax.scatter(uv[:, 0], uv[:, 1], s=s, alpha=alpha, color="0.5", linewidths=0,
                           label="test codes")
        xlim, ylim = self._plane_limits()
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xlabel(self.plane.names[0])
        ax.set_ylabel(self.plane.names[1])
        # one unit is as long on both axes, so that circles look round
        ax.set_aspect("equal", adjustable="box")
        ax.grid(True, color="0.92", lw=0.6, zorder=0)
        ax.set_axisbelow(True)

    # display
    @property
    def widget(self):
        """The ipywidgets container of the view (built on first use)."""
        if self._widget is None:
            self._widget = self._build()
            self._widget.add_class("dpm-latent-view")
            self._sync()
        return self._widget

    def _build(self):
        raise NotImplementedError

    def _sync(self) -> None:
        """Make the widgets show the state."""

    def _update(self) -> None:
        """After a change of state: mirror it in the widgets, if they exist."""
        if self._widget is not None:
            self._sync()

    def static_figure(self) -> Figure:
        """A matplotlib figure of the view's current state, for places without widgets."""
        raise NotImplementedError

    def static_png(self) -> bytes:
        """:meth:`static_figure` as PNG bytes."""
        return _figure_png(self.static_figure())

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = {"text/plain": repr(self),
                  "image/png": base64.b64encode(self.static_png()).decode("ascii")}
        if _live_widgets_possible():
            bundle.update(self.widget._repr_mimebundle_())
            bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        n = 0 if self.codes is None else self.codes.shape[0]
        return f"{type(self).__name__}(K={self.K}, images={list(self.image_shape)}, test codes={n})"

    # widgets shared by the views
    def _image_widget(self, css_class: str, width: Optional[int] = None):
        import ipywidgets as w

        width = width or self.scale * self.image_shape[-1]
        height = width * self.image_shape[-2] // self.image_shape[-1]
        image = w.Image(format="png", layout=w.Layout(width=f"{width}px", height=f"{height}px",
                                                      border="1px solid #ccc"))
        image.add_class(css_class)
        return image

    def _thumbnail_png(self, i: int) -> bytes:
        image = self.x[i].reshape(self.image_shape).float()
        return _png(_to_uint8(image), scale=max(1, self.scale // 2))

    def _label_text(self, i: int) -> str:
        if self.labels is None:
            return f"#{i}"
        label = int(self.labels[i])
        name = self.class_names[label] if self.class_names and 0 <= label < len(self.class_names) \
            else str(label)
        return f"#{i} · {name}"


def _header(title: str, subtitle: str):
    import ipywidgets as w

    return w.HTML(f"<div style='font-size:15px;font-weight:600;margin:2px 0'>{title}</div>"
                  f"<div style='color:#555;margin-bottom:4px'>{subtitle}</div>")


def _caption(text: str):
    import ipywidgets as w

    return w.HTML(f"<div style='color:#444;text-align:center'>{text}</div>")


# ----------------------------------------------------------------------------- explorer

class LatentExplorer(_LatentView):
    """Move a code z with sliders (or on the pad) and see what the decoder makes of it.

    The pad shows the encoded test set when one is given (the means of q(z|x)) and
    a marker at the current code; clicking or dragging on it moves z within the
    pad's plane (for K = 2, to the point itself). The decoded image is the decoder
    mean E[x|z] or, in ``"sample"`` mode, a draw x ~ p(x|z). For a mixture prior
    (:class:`~dpm_core.priors.MoGPriorNet`) a selector jumps to a component's
    location, and the pad draws its 2-sd ellipse.

    Args:
        model: an :class:`~dpm_core.nvil.NVIL` (or a module with its parts:
            ``gen_model.obs_model(z)`` = p(x|z), ``gen_model.prior(batch_shape)`` =
            p(z), ``inf_model(x)`` = q(z|x)) with a latent of shape ``(K,)``, or a
            :class:`~dpm_core.vae.VAE` on 28 x 28 images.
        x: test images ``[N, C, H, W]`` (model inputs) or an :class:`ImageData`
            (optional).
        labels: class labels of x, for colours (default: the ImageData's own).
        class_names: names indexed by label, e.g. ``FASHION_MNIST_CLASSES``.
        device: where to decode; the model is moved there (default: where it is).
        num_points: at most this many test images are encoded and drawn.
        z_range: the sliders and the pad span at least [-z_range, z_range], and
            further where most codes or the prior's components lie.
        image_size: the decoded image is shown about this many pixels wide (an
            integer multiple of the image width, so that pixels stay square).

    Raises:
        ValueError: if x, labels or a size has the wrong shape or value.
        NotImplementedError: if the latent is not a vector or the images have
            neither 1 nor 3 channels.

    Example:
        >>> explorer = LatentExplorer(model, test_x, test_y, class_names=FASHION_MNIST_CLASSES)
        >>> explorer.set_z(torch.zeros(model.gen_model.prior_net.outcome_shape))
        >>> explorer  # shows the widget  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, x: Optional[ImagesLike] = None, labels=None,
                 class_names: Optional[Sequence[str]] = None,
                 device: Optional[Union[str, torch.device]] = None, num_points: int = 2000,
                 z_range: float = 3.0, image_size: int = 196):
        super().__init__(model, x, labels, class_names, device, num_points, z_range, image_size)
        self._components = self.prior_components()
        self._is_mixture = isinstance(self.prior(), td.MixtureSameFamily)
        self._mode = "mean"
        self._component: Optional[int] = None
        if self._is_mixture and self._components:
            # start on the heaviest component, not the mixture mean between components
            weights = [w_c for w_c, _, _ in self._components]
            self._component = weights.index(max(weights))
            self._z = self._components[self._component][1].clone().float()
        else:
            self._z = torch.zeros(self.K)
        self._render()

    # state
    @property
    def z(self) -> Tensor:
        """The current code ``[K]`` (a copy, on the CPU)."""
        return self._z.clone()

    @property
    def mode(self) -> str:
        """``"mean"`` (the decoder mean) or ``"sample"`` (a draw from p(x|z))."""
        return self._mode

    @property
    def component(self) -> Optional[int]:
        """The selected mixture component, or None."""
        return self._component

    @property
    def image(self) -> Tensor:
        """The current decoded image ``[C, H, W]`` (CPU, float in [0, 1])."""
        return self._image

    @property
    def png(self) -> bytes:
        """The current image as the PNG the widget shows (upscaled, nearest neighbour)."""
        return self._png

    def set_z(self, z) -> None:
        """Move to code ``z`` ``[K]`` and decode it.

        Raises:
            ValueError: if z does not have shape ``[K]`` or is not finite.
        """
        z = torch.as_tensor(z, dtype=torch.float32).detach().cpu()
        if tuple(z.shape) != (self.K,):
            raise ValueError(f"z must have shape [K] = [{self.K}], got {list(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError(f"z must be finite, got {z.tolist()}")
        self._z = z.clone()
        self._render()

    def set_coordinate(self, k: int, value: float) -> None:
        """Set one coordinate z_k (what slider k does)."""
        k = _check_index(k, self.K, "k")
        z = self._z.clone()
        z[k] = float(value)
        self.set_z(z)

    def pick(self, point_xy) -> None:
        """Move z to a point ``(u, v)`` of the pad's plane (what a click on the pad does).

        For K = 2 the point is z itself; otherwise z moves within the plane and keeps
        its other coordinates.
        """
        uv = torch.as_tensor(point_xy, dtype=torch.float32).reshape(-1)
        if uv.shape != (2,):
            raise ValueError(f"point_xy must be a point (u, v) of the pad, got {point_xy!r}")
        self.set_z(self.plane.lift(uv, self._z))

    def set_mode(self, mode: str) -> None:
        """Show the decoder mean (``"mean"``) or a draw x ~ p(x|z) (``"sample"``)."""
        self._mode = _check_choice(mode, _MODES, "mode")
        self._render()

    def resample(self) -> None:
        """Decode again: in ``"sample"`` mode, a fresh draw from p(x|z)."""
        self._render()

    def set_component(self, c: Optional[int]) -> None:
        """Select mixture component c of the prior (None: none) and move z to its location.

        Raises:
            ValueError: if the prior is not a mixture, or c is not one of its components.
        """
        if c is None:
            self._component = None
            self._update()
            return
        if not self._is_mixture:
            raise ValueError(f"set_component needs a mixture prior (e.g. MoGPriorNet); this "
                             f"model's prior is {type(self.model.gen_model.prior_net).__name__}")
        c = _check_index(c, len(self._components), "c")
        self._component = c
        self._z = self._components[c][1].clone().float()
        self._render()

    def sample_prior(self) -> None:
        """Move z to a draw from the prior p(z)."""
        with torch.no_grad():
            self.set_z(self.prior().sample().float().cpu())

    def component_text(self) -> str:
        """What the selected component is: its weight, location and spread."""
        if self._component is None:
            return ""
        w_c, loc, scale = self._components[self._component]
        return (f"component {self._component}: weight {w_c:.2f}, mean {_vector_text(loc)}, "
                f"sd {_vector_text(scale)}")

    def _render(self) -> None:
        self._image = self.decode(self._z[None], self._mode)[0]  # [C, H, W]
        self._png = _png(_to_uint8(self._image), self.scale)
        self._update()

    # widgets
    def _build(self):
        import ipywidgets as w

        self._decoded = self._image_widget("dpm-decoded")
        self._sliders = []
        for k in range(self.K):
            lo, hi = float(self.low[k]), float(self.high[k])
            slider = w.FloatSlider(value=0.0, min=lo, max=hi, step=round((hi - lo) / 200, 4),
                                   description=_z_name(k), continuous_update=True,
                                   readout_format=".2f",
                                   layout=w.Layout(width="340px"),
                                   style={"description_width": "24px"})
            slider.add_class(f"dpm-z{k}")
            slider.observe(lambda change, k=k: self._on_slider(k, change["new"]), names="value")
            self._sliders.append(slider)
        self._mode_buttons = w.ToggleButtons(
            options=[("mean E[x|z]", "mean"), ("sample x ~ p(x|z)", "sample")],
            value=self._mode, style={"button_width": "150px"},
            tooltips=["the mean of p(x|z): pixel probabilities",
                      "one draw from p(x|z): what the model generates"])
        self._mode_buttons.observe(lambda change: self.set_mode(change["new"]), names="value")
        self._resample = w.Button(description="new draw", icon="refresh",
                                  layout=w.Layout(width="110px"),
                                  tooltip="draw x ~ p(x|z) again")
        self._resample.on_click(lambda _: self.resample())
        prior_button = w.Button(description="z ~ p(z)", icon="random",
                                layout=w.Layout(width="110px"),
                                tooltip="jump to a random code from the prior")
        prior_button.on_click(lambda _: self.sample_prior())
        zero_button = w.Button(description="z = 0", layout=w.Layout(width="80px"),
                               tooltip="back to the origin")
        zero_button.on_click(lambda _: self.set_z(torch.zeros(self.K)))
        self._info = w.HTML()

        controls = [self._mode_buttons, w.HBox([self._resample, prior_button, zero_button])]
        if self._is_mixture:
            self._component_select = w.Dropdown(
                options=[("none", None)] + [(f"{c}  (weight {wc:.2f})", c)
                                            for c, (wc, _, _) in enumerate(self._components)],
                value=self._component, description="component",
                style={"description_width": "80px"}, layout=w.Layout(width="280px"))
            self._component_select.observe(lambda change: self._on_component(change["new"]),
                                           names="value")
            controls.append(self._component_select)
        controls.append(self._info)

        columns = 1 if self.K <= 4 else (2 if self.K <= 8 else 3)
        sliders = w.GridBox(self._sliders, layout=w.Layout(
            grid_template_columns=f"repeat({columns}, 345px)", grid_gap="0 8px"))
        slider_box = w.VBox([_caption(f"<b>latent code z</b> ({self.K} coordinates)"), sliders])

        right = [self._decoded] + controls
        if self.K <= 4:
            right.append(slider_box)
        self._pad = _Pad(self._draw_pad, self.pick, legend_outside=self.labels is not None)
        top = w.HBox([self._pad.widget, w.VBox(right, layout=w.Layout(margin="0 0 0 12px"))],
                     layout=w.Layout(align_items="flex-start"))
        parts = [_header("Latent explorer", self._subtitle()), top]
        if self.K > 4:
            parts.append(slider_box)
        return w.VBox(parts)

    def _subtitle(self) -> str:
        prior = type(self.model.gen_model.prior_net).__name__
        pad = ("click or drag on the plot to pick z" if self._pad is None or self._pad.canvas
               else "install ipympl to click on the plot")
        return f"K = {self.K} · prior {prior} · {pad}, or move the sliders"

    def _draw_pad(self, ax: Axes) -> list:
        self._draw_codes(ax)
        for c, (w_c, loc, scale) in enumerate(self._components if self._is_mixture else []):
            ax.add_patch(_ellipse(self.plane.project(loc), self.plane.covariance(scale),
                                  fill=False, lw=1.0, ls="--", ec="0.45"))
            u, v = self.plane.project(loc).tolist()
            ax.annotate(str(c), (u, v), color="0.2", fontsize=9, fontweight="bold", ha="center",
                        va="center", bbox={"boxstyle": "circle,pad=0.2", "fc": "white",
                                           "ec": "0.45", "alpha": 0.85}, zorder=4)
        self._selected_ellipse = _ellipse(torch.zeros(2), torch.eye(2), fill=False, lw=2.2,
                                          ec=_MARKER_COLOUR, visible=False)
        ax.add_patch(self._selected_ellipse)
        (self._marker,) = ax.plot([], [], marker="o", ms=13, mfc="none", mec=_MARKER_COLOUR,
                                  mew=2.5, ls="none", zorder=5)
        (self._cross,) = ax.plot([], [], marker="+", ms=13, mec=_MARKER_COLOUR, mew=1.5,
                                 ls="none", zorder=5)
        ax.set_title("codes of test images: click to pick z" if self.codes is not None
                     else "latent plane: click to pick z", fontsize=11)
        return [self._selected_ellipse, self._marker, self._cross]

    def _sync(self) -> None:
        self._syncing = True
        try:
            with self._widget.hold_sync():
                self._decoded.value = self._png
                for k, slider in enumerate(self._sliders):
                    value = float(self._z[k])
                    slider.min, slider.max = min(slider.min, value), max(slider.max, value)
                    slider.value = value
                self._mode_buttons.value = self._mode
                self._resample.disabled = self._mode != "sample"
                if self._is_mixture:
                    self._component_select.value = self._component
                self._info.value = self._info_html()
            self._sync_pad()
        finally:
            self._syncing = False

    def _info_html(self) -> str:
        what = "decoder mean E[x|z]" if self._mode == "mean" else "a draw x ~ p(x|z)"
        lines = [f"showing the {what} at z = {_vector_text(self._z, 6)}"]
        if self._component is not None:
            lines.append(self.component_text())
        return "<div style='color:#333;max-width:420px'>" + "<br>".join(lines) + "</div>"

    def _sync_pad(self) -> None:
        u, v = self.plane.project(self._z).tolist()
        self._marker.set_data([u], [v])
        self._cross.set_data([u], [v])
        if self._component is not None:
            _, loc, scale = self._components[self._component]
            _move_ellipse(self._selected_ellipse, self.plane.project(loc),
                          self.plane.covariance(scale))
        self._selected_ellipse.set_visible(self._component is not None)
        self._pad.refresh()

    def _on_slider(self, k: int, value: float) -> None:
        if not self._syncing:
            self.set_coordinate(k, value)

    def _on_component(self, c: Optional[int]) -> None:
        if not self._syncing:
            self.set_component(c)

    def static_figure(self, steps: int = 11) -> Figure:
        """The pad and a grid of decoder means over the pad's plane (through the current z)."""
        fig = Figure(figsize=(11.5, 5.0), dpi=_STATIC_DPI, layout="constrained")
        ax_pad, ax_grid = fig.subplots(1, 2, width_ratios=[1.15, 1])
        self._draw_codes(ax_pad)
        u, v = self.plane.project(self._z).tolist()
        ax_pad.plot([u], [v], marker="o", ms=12, mfc="none", mec=_MARKER_COLOUR, mew=2.5)
        for w_c, loc, scale in (self._components if self._is_mixture else []):
            ax_pad.add_patch(_ellipse(self.plane.project(loc), self.plane.covariance(scale),
                                      fill=False, lw=1.0, ls="--", ec="0.45"))
        ax_pad.set_title("codes of test images (means of q(z|x))" if self.codes is not None
                         else "latent plane")
        xlim, ylim = self._plane_limits()
        us, vs = torch.linspace(*xlim, steps), torch.linspace(*ylim, steps).flip(0)
        # rows from the top: v decreases downwards, as on the plot
        z = torch.stack([self.plane.lift(torch.stack([a, b]), self._z) for b in vs for a in us])
        grid = image_grid(self.decode(z), nrow=steps, padding=1)
        du, dv = (xlim[1] - xlim[0]) / (steps - 1), (ylim[1] - ylim[0]) / (steps - 1)
        ax_grid.imshow(grid, extent=(xlim[0] - du / 2, xlim[1] + du / 2,
                                     ylim[0] - dv / 2, ylim[1] + dv / 2),
                       interpolation="nearest", aspect="auto")
        ax_grid.set_xlabel(self.plane.names[0])
        ax_grid.set_ylabel(self.plane.names[1])
        ax_grid.set_title("decoder mean E[x|z] over the same plane")
        fig.suptitle(f"Latent explorer (static view; K = {self.K})")
        return fig


# ----------------------------------------------------------------------------- interpolator

class Interpolator(_LatentView):
    """Walk from one test image's code to another's and decode along the way.

    With z_A and z_B the means of q(z|x_A) and q(z|x_B), a slider t in [0, 1]
    moves along the straight line :func:`lerp` or the spherical path :func:`slerp`;
    the image shows the decoder mean E[x|z(t)], a strip below it the path at nine
    points, and the pad the path among the test codes. Clicking on the pad picks
    the nearest test image as the next end (A, then B, then A, ...).

    Args:
        model: the model.
        x: test images ``[N, C, H, W]`` or an :class:`ImageData` (N >= 2).
        labels: class labels, for colours and captions (optional).
        class_names: names of the labels.
        i: index of image A (default 0).
        j: index of image B (default: the first image of another class than A, else 1).
        steps: images in the strip along the path.
        Other arguments as for :class:`LatentExplorer`.

    Example:
        >>> view = Interpolator(model, test_x, test_y)
        >>> view.set_t(0.5)
        >>> view.image.shape
        torch.Size([1, 28, 28])
    """

    def __init__(self, model: nn.Module, x: ImagesLike, labels=None,
                 class_names: Optional[Sequence[str]] = None, i: int = 0,
                 j: Optional[int] = None, steps: int = 9,
                 device: Optional[Union[str, torch.device]] = None, num_points: int = 2000,
                 z_range: float = 3.0, image_size: int = 196):
        if x is None:
            raise ValueError("x must hold test images to interpolate between, got None")
        super().__init__(model, x, labels, class_names, device, num_points, z_range, image_size)
        n = self.codes.shape[0]
        if n < 2:
            raise ValueError(f"x must hold at least 2 images, got {n}")
        self.steps = _check_positive_int(steps, "steps")
        if j is None:
            i = _check_index(i, n, "i")
            others = [] if self.labels is None else \
                (self.labels != self.labels[i]).nonzero().flatten().tolist()
            j = others[0] if others else (i + 1) % n
        self._i, self._j, self._t, self._path = 0, 1, 0.5, "linear"
        self._next_end = 0
        self.select(i, j)

    @property
    def i(self) -> int:
        """Index of image A."""
        return self._i

    @property
    def j(self) -> int:
        """Index of image B."""
        return self._j

    @property
    def t(self) -> float:
        """Where on the path: 0 at A, 1 at B."""
        return self._t

    @property
    def path(self) -> str:
        """``"linear"`` or ``"spherical"``."""
        return self._path

    @property
    def z(self) -> Tensor:
        """The current code z(t) ``[K]``."""
        return self._z.clone()

    @property
    def image(self) -> Tensor:
        """The decoder mean at z(t), ``[C, H, W]`` (CPU)."""
        return self._image

    @property
    def png(self) -> bytes:
        """The current image as the PNG the widget shows."""
        return self._png

    def path_codes(self, steps: Optional[int] = None) -> Tensor:
        """Codes ``[T, K]`` at ``steps`` evenly spaced t from 0 to 1 along the path."""
        t = torch.linspace(0.0, 1.0, steps or self.steps)
        return _PATH_FNS[self._path](self._z_a, self._z_b, t)

    def select(self, i: int, j: int) -> None:
        """Interpolate between test images i (A) and j (B)."""
        n = self.codes.shape[0]
        self._i, self._j = _check_index(i, n, "i"), _check_index(j, n, "j")
        self._z_a, self._z_b = self.codes[self._i], self.codes[self._j]
        self._render(strip=True)

    def set_t(self, t: float) -> None:
        """Move to the point t of the path (0: A, 1: B)."""
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t}")
        self._t = t
        self._render()

    def set_path(self, path: str) -> None:
        """Follow the straight line (``"linear"``) or the spherical path (``"spherical"``)."""
        self._path = _check_choice(path, _PATHS, "path")
        self._render(strip=True)

    def pick(self, point_xy) -> None:
        """Make the test image whose code is nearest to a pad point the next end (A, B, A, ...)."""
        uv = torch.as_tensor(point_xy, dtype=torch.float32).reshape(-1)
        if uv.shape != (2,):
            raise ValueError(f"point_xy must be a point (u, v) of the pad, got {point_xy!r}")
        nearest = _nearest(self.plane.project(self.codes), uv)
        if self._next_end == 0:
            self.select(nearest, self._j)
        else:
            self.select(self._i, nearest)
        self._next_end = 1 - self._next_end

    def random_pair(self, generator: Optional[torch.Generator] = None) -> None:
        """Pick two different test images at random."""
        i, j = torch.randperm(self.codes.shape[0], generator=generator)[:2].tolist()
        self.select(i, j)

    def _render(self, strip: bool = False) -> None:
        self._z = _PATH_FNS[self._path](self._z_a, self._z_b, self._t)
        self._image = self.decode(self._z[None])[0]
        self._png = _png(_to_uint8(self._image), self.scale)
        if strip:
            self._strip = self.decode(self.path_codes())  # [T, C, H, W]
        if self._widget is not None:
            self._sync(full=strip)

    # widgets
    def _build(self):
        import ipywidgets as w

        self._decoded = self._image_widget("dpm-decoded")
        thumb = max(1, self.scale // 2) * self.image_shape[-1]
        self._thumb_a = self._image_widget("dpm-image-a", thumb)
        self._thumb_b = self._image_widget("dpm-image-b", thumb)
        self._caption_a, self._caption_b = _caption(""), _caption("")
        self._caption_t = _caption("")
        n = self.codes.shape[0]
        self._index_a = w.BoundedIntText(min=0, max=n - 1, description="A: image",
                                         layout=w.Layout(width="150px"),
                                         style={"description_width": "60px"})
        self._index_b = w.BoundedIntText(min=0, max=n - 1, description="B: image",
                                         layout=w.Layout(width="150px"),
                                         style={"description_width": "60px"})
        for box in (self._index_a, self._index_b):
            box.observe(lambda _: self._on_indices(), names="value")
        shuffle = w.Button(description="random pair", icon="random", layout=w.Layout(width="120px"))
        shuffle.on_click(lambda _: self.random_pair())
        self._t_slider = w.FloatSlider(min=0.0, max=1.0, step=0.01, description="t",
                                       continuous_update=True, readout_format=".2f",
                                       layout=w.Layout(width="420px"),
                                       style={"description_width": "20px"})
        self._t_slider.add_class("dpm-t")
        self._t_slider.observe(lambda change: self._on_t(change["new"]), names="value")
        self._path_buttons = w.ToggleButtons(
            options=[("straight line", "linear"), ("spherical (slerp)", "spherical")],
            style={"button_width": "130px"},
            tooltips=["(1 - t) z_A + t z_B", "along the great circle between z_A and z_B"])
        self._path_buttons.observe(lambda change: self._on_path(change["new"]), names="value")
        self._strip_image = w.Image(format="png")
        self._strip_image.add_class("dpm-strip")

        def column(image, caption):
            return w.VBox([image, caption], layout=w.Layout(align_items="center"))

        images = w.HBox([column(self._thumb_a, self._caption_a),
                         column(self._decoded, self._caption_t),
                         column(self._thumb_b, self._caption_b)],
                        layout=w.Layout(align_items="center", justify_content="space-around"))
        right = w.VBox([images, self._t_slider, self._path_buttons,
                        w.HBox([self._index_a, self._index_b, shuffle]),
                        _caption("the path at 9 points, A to B"), self._strip_image],
                       layout=w.Layout(margin="0 0 0 12px", align_items="center"))
        self._pad = _Pad(self._draw_pad, self.pick, legend_outside=self.labels is not None)
        pad_hint = "click on the plot to pick A, then B" if self._pad.canvas else \
            "type image numbers"
        return w.VBox([_header("Interpolation in latent space",
                               f"from z_A to z_B, the means of q(z|x) for two test images · "
                               f"{pad_hint}"),
                       w.HBox([self._pad.widget, right],
                              layout=w.Layout(align_items="flex-start"))])

    def _draw_pad(self, ax: Axes) -> list:
        self._draw_codes(ax, alpha=0.35)
        (self._path_line,) = ax.plot([], [], color=_PATH_COLOUR, lw=2.0, zorder=4)
        (self._ends,) = ax.plot([], [], ls="none", marker="s", ms=8, mfc="white",
                                mec=_PATH_COLOUR, mew=2, zorder=5)
        (self._marker,) = ax.plot([], [], marker="o", ms=12, mfc=_MARKER_COLOUR, mec="white",
                                  mew=1.5, ls="none", zorder=6)
        self._label_a = ax.annotate("A", (0, 0), xytext=(6, 6), textcoords="offset points",
                                    fontweight="bold", zorder=7)
        self._label_b = ax.annotate("B", (0, 0), xytext=(6, 6), textcoords="offset points",
                                    fontweight="bold", zorder=7)
        ax.set_title("test codes: the path from A to B", fontsize=11)
        return [self._path_line, self._ends, self._marker, self._label_a, self._label_b]

    def _sync(self, full: bool = True) -> None:
        self._syncing = True
        try:
            if not full:  # only t moved
                with self._widget.hold_sync():
                    self._decoded.value = self._png
                    self._caption_t.value = f"E[x|z(t)] at t = {self._t:.2f}"
                    self._t_slider.value = self._t
                u, v = self.plane.project(self._z).tolist()
                self._marker.set_data([u], [v])
                self._pad.refresh()
                return
            with self._widget.hold_sync():
                self._decoded.value = self._png
                self._thumb_a.value = self._thumbnail_png(self._i)
                self._thumb_b.value = self._thumbnail_png(self._j)
                self._caption_a.value = f"<b>A</b> {self._label_text(self._i)}"
                self._caption_b.value = f"<b>B</b> {self._label_text(self._j)}"
                self._caption_t.value = f"E[x|z(t)] at t = {self._t:.2f}"
                self._index_a.value, self._index_b.value = self._i, self._j
                self._t_slider.value = self._t
                self._path_buttons.value = self._path
                self._strip_image.value = _grid_png(self._strip, nrow=self.steps, width=560)
            line = self.plane.project(self.path_codes(64))  # [64, 2]
            self._path_line.set_data(line[:, 0], line[:, 1])
            ends = self.plane.project(torch.stack([self._z_a, self._z_b]))
            self._ends.set_data(ends[:, 0], ends[:, 1])
            self._label_a.xy, self._label_b.xy = tuple(ends[0].tolist()), tuple(ends[1].tolist())
            u, v = self.plane.project(self._z).tolist()
            self._marker.set_data([u], [v])
            self._pad.refresh()
        finally:
            self._syncing = False

    def _on_t(self, t: float) -> None:
        if not self._syncing:
            self.set_t(t)

    def _on_path(self, path: str) -> None:
        if not self._syncing:
            self.set_path(path)

    def _on_indices(self) -> None:
        if not self._syncing:
            self.select(self._index_a.value, self._index_b.value)

    def static_figure(self) -> Figure:
        """The two images, both paths decoded at ``steps`` points, and the paths in the plane."""
        fig = Figure(figsize=(11.5, 4.6), dpi=_STATIC_DPI, layout="constrained")
        ax_pad, ax_rows = fig.subplots(1, 2, width_ratios=[1, 1.5])
        self._draw_codes(ax_pad, alpha=0.35, legend=False)
        rows, lines = [], []
        for path, colour in zip(_PATHS, (_PATH_COLOUR, _SAMPLE_COLOUR)):
            codes = _PATH_FNS[path](self._z_a, self._z_b, torch.linspace(0, 1, 64))
            uv = self.plane.project(codes)
            lines += ax_pad.plot(uv[:, 0], uv[:, 1], color=colour, lw=2, label=path)
            rows.append(self.decode(_PATH_FNS[path](self._z_a, self._z_b,
                                                    torch.linspace(0, 1, self.steps))))
        ends = self.plane.project(torch.stack([self._z_a, self._z_b]))
        for name, (u, v) in zip("AB", ends.tolist()):
            ax_pad.annotate(name, (u, v), xytext=(5, 5), textcoords="offset points",
                            fontweight="bold")
        ax_pad.legend(handles=lines, loc="best", fontsize="small")
        ax_pad.set_title("paths between the codes of A and B")
        originals = self.x[[self._i, self._j]].reshape((2,) + self.image_shape).float().cpu()
        blank = torch.ones((1,) + self.image_shape)
        images = torch.cat([originals[:1], blank, rows[0], blank, originals[1:],
                            originals[:1], blank, rows[1], blank, originals[1:]])
        ax_rows.imshow(image_grid(images, nrow=self.steps + 4), interpolation="nearest")
        ax_rows.set_axis_off()
        ax_rows.set_title(f"A {self._label_text(self._i)} → B {self._label_text(self._j)}: "
                          f"straight line (top), spherical (bottom)")
        fig.suptitle("Interpolation (static view)")
        return fig


# ----------------------------------------------------------------------------- posterior

class PosteriorView(_LatentView):
    """One test image x, draws z_s ~ q(z|x), their reconstructions, and the prior around them.

    The pad shows p(z) (density contours for K = 2, draws otherwise), the test codes
    faintly, the draws from q(z|x) and its 2-sd ellipse; clicking on the pad picks
    the test image whose code is nearest. The text reports the rate
    KL(q(z|x) || p(z)) (closed form where torch has one, else a Monte Carlo estimate
    from the draws) and log p(x|z) of the draws.

    Args:
        model: the model.
        x: test images ``[N, C, H, W]`` or an :class:`ImageData`.
        labels: class labels (optional).
        class_names: names of the labels.
        i: the test image shown first.
        num_samples: S, draws from q(z|x).
        Other arguments as for :class:`LatentExplorer`.

    Example:
        >>> view = PosteriorView(model, test_x, num_samples=16)
        >>> view.select(3)
        >>> view.samples.shape, view.reconstructions.shape
        (torch.Size([16, 2]), torch.Size([16, 1, 28, 28]))
    """

    def __init__(self, model: nn.Module, x: ImagesLike, labels=None,
                 class_names: Optional[Sequence[str]] = None, i: int = 0, num_samples: int = 16,
                 device: Optional[Union[str, torch.device]] = None, num_points: int = 2000,
                 z_range: float = 3.0, image_size: int = 196):
        if x is None:
            raise ValueError("x must hold test images, got None")
        super().__init__(model, x, labels, class_names, device, num_points, z_range, image_size)
        self.num_samples = _check_positive_int(num_samples, "num_samples")
        self.select(i)

    @property
    def i(self) -> int:
        """Index of the test image."""
        return self._i

    @property
    def samples(self) -> Tensor:
        """The draws z_s ~ q(z|x), ``[S, K]`` (CPU)."""
        return self._samples

    @property
    def reconstructions(self) -> Tensor:
        """The decoder means E[x|z_s] of the draws, ``[S, C, H, W]`` (CPU)."""
        return self._reconstructions

    @property
    def image(self) -> Tensor:
        """The reconstruction at the mean of q(z|x), ``[C, H, W]`` (CPU)."""
        return self._image

    @property
    def png(self) -> bytes:
        """The current image as the PNG the widget shows."""
        return self._png

    def select(self, i: int) -> None:
        """Show test image i, with fresh draws from q(z|x_i)."""
        self._i = _check_index(i, self.codes.shape[0], "i")
        self.resample()

    def resample(self) -> None:
        """Draw the S codes from q(z|x) again."""
        x = self.x[self._i][None]  # [1, C, H, W]
        with _evaluating(self.model), _one_cpu_thread(self.device):
            qz = self.model.inf_model(x)  # batch_shape [1]
            pz = self.model.gen_model.prior((1,))
            z = qz.sample((self.num_samples,))  # [S, 1, K]
            log_px_z = self.model.gen_model.obs_model(z).log_prob(x)  # [S, 1]
            try:
                rate, exact = td.kl_divergence(qz, pz), True
            except NotImplementedError:
                rate, exact = (qz.log_prob(z) - pz.log_prob(z)).mean(0), False
            qz_one = self.model.inf_model(x[0])  # batch_shape ()
        self._qz_components = _gaussian_components(qz_one)
        self._samples = z[:, 0].float().cpu()
        self._rate, self._rate_exact = float(rate), exact
        self._log_px_z = log_px_z[:, 0].float().cpu()
        self._reconstructions = self.decode(self._samples)
        self._image = self.decode(self.codes[self._i][None])[0]
        self._png = _png(_to_uint8(self._image), self.scale)
        self._update()

    def pick(self, point_xy) -> None:
        """Show the test image whose code is nearest to a pad point."""
        uv = torch.as_tensor(point_xy, dtype=torch.float32).reshape(-1)
        if uv.shape != (2,):
            raise ValueError(f"point_xy must be a point (u, v) of the pad, got {point_xy!r}")
        self.select(_nearest(self.plane.project(self.codes), uv))

    def info_text(self) -> str:
        """The rate and the reconstruction log-likelihoods of the current draws."""
        how = "" if self._rate_exact else f" (Monte Carlo, {self.num_samples} draws)"
        lp = self._log_px_z
        return (f"rate KL(q(z|x) || p(z)) = {self._rate:.2f} nats{how}; "
                f"log p(x|z_s) of the draws: mean {float(lp.mean()):.1f}, "
                f"from {float(lp.min()):.1f} to {float(lp.max()):.1f}")

    # widgets
    def _build(self):
        import ipywidgets as w

        self._original = self._image_widget("dpm-original")
        self._decoded = self._image_widget("dpm-decoded")
        self._grid = w.Image(format="png")
        self._grid.add_class("dpm-samples")
        self._title = _caption("")
        self._info = w.HTML()
        self._index = w.BoundedIntText(min=0, max=self.codes.shape[0] - 1, description="test image",
                                       layout=w.Layout(width="170px"),
                                       style={"description_width": "75px"})
        self._index.observe(lambda change: self._on_index(change["new"]), names="value")
        again = w.Button(description="new draws", icon="refresh", layout=w.Layout(width="120px"))
        again.on_click(lambda _: self.resample())

        def column(image, text):
            return w.VBox([image, _caption(text)], layout=w.Layout(align_items="center"))

        right = w.VBox([
            self._title,
            w.HBox([column(self._original, "x"),
                    column(self._decoded, "E[x|z] at the mean of q(z|x)")]),
            w.HBox([self._index, again]),
            _caption(f"E[x|z_s] for {self.num_samples} draws z_s ~ q(z|x)"),
            self._grid, self._info,
        ], layout=w.Layout(margin="0 0 0 12px", align_items="center"))
        self._pad = _Pad(self._draw_pad, self.pick)
        hint = "click on the plot to pick a test image" if self._pad.canvas else \
            "type an image number"
        return w.VBox([_header("The posterior q(z|x) of one image",
                               f"its draws, their reconstructions, and the prior p(z) · {hint}"),
                       w.HBox([self._pad.widget, right],
                              layout=w.Layout(align_items="flex-start"))])

    def _draw_prior(self, ax: Axes) -> None:
        """Density contours of p(z) on the plane (its marginal there), or projected draws.

        A Gaussian component N(mu, diag(s^2)) projects onto the plane as the 2-D
        Gaussian N(project(mu), B^T diag(s^2) B), so a Gaussian or MoG prior has an
        exact marginal on the plane; for K = 2 it is p(z) itself.
        """
        xlim, ylim = self._plane_limits()
        components = self.prior_components()
        if components:
            u, v = torch.meshgrid(torch.linspace(*xlim, 120), torch.linspace(*ylim, 120),
                                  indexing="xy")
            uv = torch.stack([u, v], -1).double()  # [120, 120, 2]
            density = torch.zeros(u.shape, dtype=torch.float64)
            for weight, loc, scale in components:
                marginal = td.MultivariateNormal(self.plane.project(loc.float()).double(),
                                                 self.plane.covariance(scale.float()).double())
                density += weight * marginal.log_prob(uv).exp()
            ax.contour(u, v, density, levels=6, colors="0.45", linewidths=0.8, zorder=1)
            ax.plot([], [], color="0.45", lw=0.8,
                    label="prior p(z)" if self.K == 2 else "prior p(z) on this plane")
        else:
            with torch.no_grad():
                draws = self.model.gen_model.prior((1000,)).sample().float().cpu()
            uv = self.plane.project(draws)
            ax.scatter(uv[:, 0], uv[:, 1], s=4, color="0.45", alpha=0.3, linewidths=0,
                       label="draws from p(z)", zorder=1)

    def _draw_pad(self, ax: Axes) -> list:
        uv = self.plane.project(self.codes)
        ax.scatter(uv[:, 0], uv[:, 1], s=5, color="#1f77b4", alpha=0.15, linewidths=0,
                   label="test codes", zorder=2)
        self._draw_codes(ax, points=False)
        self._draw_prior(ax)
        self._samples_artist = ax.scatter([], [], s=28, color=_SAMPLE_COLOUR, edgecolors="black",
                                          linewidths=0.6, zorder=5, label="z_s ~ q(z|x)")
        (self._mean_artist,) = ax.plot([], [], marker="*", ms=13, mfc=_MARKER_COLOUR, mec="white",
                                       ls="none", zorder=6, label="mean of q(z|x)")
        # one ellipse per Gaussian component of q(z|x) (their number does not change)
        self._q_ellipses = [
            ax.add_patch(_ellipse(torch.zeros(2), torch.eye(2), fill=False, lw=1.8,
                                  ec=_MARKER_COLOUR, zorder=6))
            for _ in self._qz_components]
        legend = ax.legend(loc="upper right", fontsize="small", framealpha=0.9, markerscale=1.5)
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)
        ax.set_title("where q(z|x) sits against the prior", fontsize=11)
        return [self._samples_artist, self._mean_artist] + self._q_ellipses

    def _sync(self) -> None:
        self._syncing = True
        try:
            with self._widget.hold_sync():
                self._original.value = _png(_to_uint8(self.x[self._i].reshape(self.image_shape)),
                                            self.scale)
                self._decoded.value = self._png
                self._grid.value = _grid_png(self._reconstructions,
                                             nrow=min(8, self.num_samples), width=500)
                self._title.value = f"<b>test image {self._label_text(self._i)}</b>"
                self._index.value = self._i
                self._info.value = ("<div style='color:#333;max-width:440px'>"
                                    f"{self.info_text()}</div>")
            self._samples_artist.set_offsets(self.plane.project(self._samples).numpy())
            u, v = self.plane.project(self.codes[self._i]).tolist()
            self._mean_artist.set_data([u], [v])
            for patch, (weight, loc, scale) in zip(self._q_ellipses, self._qz_components):
                _move_ellipse(patch, self.plane.project(loc), self.plane.covariance(scale))
                patch.set_alpha(max(0.3, weight))
            self._pad.refresh()
        finally:
            self._syncing = False

    def _on_index(self, i: int) -> None:
        if not self._syncing:
            self.select(i)

    def static_figure(self) -> Figure:
        """The image, its reconstructions from the draws, and the draws against the prior."""
        fig = Figure(figsize=(11.0, 4.6), dpi=_STATIC_DPI, layout="constrained")
        ax_pad, ax_x, ax_grid = fig.subplots(1, 3, width_ratios=[1.3, 0.45, 1.1])
        uv = self.plane.project(self.codes)
        ax_pad.scatter(uv[:, 0], uv[:, 1], s=5, color="#1f77b4", alpha=0.15, linewidths=0,
                       label="test codes")
        self._draw_codes(ax_pad, points=False)
        self._draw_prior(ax_pad)
        samples = self.plane.project(self._samples)
        ax_pad.scatter(samples[:, 0], samples[:, 1], s=28, color=_SAMPLE_COLOUR,
                       edgecolors="black", linewidths=0.6, label="z_s ~ q(z|x)", zorder=5)
        u, v = self.plane.project(self.codes[self._i]).tolist()
        ax_pad.plot([u], [v], marker="*", ms=13, mfc=_MARKER_COLOUR, mec="white", ls="none",
                    label="mean of q(z|x)", zorder=6)
        ax_pad.legend(loc="upper right", fontsize="small")
        ax_pad.set_title("q(z|x) against the prior")
        pair = torch.stack([self.x[self._i].reshape(self.image_shape).float().cpu(), self._image])
        ax_x.imshow(image_grid(pair, nrow=1), interpolation="nearest")
        ax_x.set_axis_off()
        ax_x.set_title("x (top), E[x|z] at the\nmean of q(z|x) (bottom)", fontsize=10)
        ax_grid.imshow(image_grid(self._reconstructions, nrow=min(8, self.num_samples)),
                       interpolation="nearest")
        ax_grid.set_axis_off()
        ax_grid.set_title(f"E[x|z_s], {self.num_samples} draws z_s ~ q(z|x)")
        fig.suptitle(f"Posterior of test image {self._label_text(self._i)} (static view); "
                     f"rate {self._rate:.1f} nats")
        return fig
