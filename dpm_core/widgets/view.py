"""What the latent views share: the model, the encoded test set, the plane and the display."""

from __future__ import annotations

import base64
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributions as td
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..data import ImageData
from ..grading import grading_mode
from ..plotting import as_images, plot_latent_scatter
from ..threads import cpu_threads
from ..utils import (batch_of, evaluating, model_device, one_of, positive_int, positive_number,
                     read_only)
from ..flows import central_code
from .geometry import ELLIPSE_SD, Plane, gaussian_components
from .render import figure_png, png_bytes, to_uint8
from .ui import Pad, ipywidgets, live_widgets_possible

__all__ = ["LatentView", "ImagesLike", "MODES", "one_cpu_thread"]

MODES = ("mean", "sample")
_ENCODE_BATCH = 500

ImagesLike = Union[Tensor, ImageData]


def one_cpu_thread(device: torch.device):
    """Run torch's CPU work on one intra-op thread inside the block, then restore the setting.

    Decoding one image (or a few) gains nothing from the thread pool, and on a busy
    2-core machine the pool's threads wait for each other: one update with the CNN
    decoder for 64x64 images took 130 ms on 2 threads and 16 ms on one
    (``benchmarks/widgets_latency.py``). Other devices are left alone.
    """
    return cpu_threads(1) if device.type == "cpu" else nullcontext()


class LatentView:
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
        num_points = positive_int("num_points", num_points)
        image_size = positive_int("image_size", image_size)
        z_range = positive_number("z_range", z_range)
        latent_shape = tuple(model.gen_model.prior_net.outcome_shape)
        if len(latent_shape) != 1:
            raise NotImplementedError(f"the views need a latent of shape (K,), got {latent_shape}")
        self.model = model
        if device is not None and torch.device(device) != model_device(model):
            model.to(device)
        self.device = model_device(model)
        self.K = latent_shape[0]
        self.data_shape = tuple(model.gen_model.cpd_net.outcome_shape)
        # [1, C, H, W]: checks that the decoder's outputs can be shown as images
        blank = as_images(torch.zeros(self.data_shape), self.data_shape)  # [1, C, H, W]
        self.image_shape = tuple(blank.shape[1:])
        if self.image_shape[0] not in (1, 3):
            raise NotImplementedError(f"only grey (C = 1) or colour (C = 3) images can be shown, "
                                      f"got C = {self.image_shape[0]}")
        self.scale = max(1, image_size // self.image_shape[-1])
        self.class_names = tuple(class_names) if class_names is not None else None
        self.x, self.labels = self._take_data(x, labels, num_points)
        self.codes = self._encode(self.x) if self.x is not None else None  # [N, K] on the CPU
        self.plane = Plane.fit(self.codes, self.K)
        self.low, self.high = self._bounds(z_range)  # [K] each
        self._widget = None
        self._pad: Optional[Pad] = None
        self._syncing = False
        # the current code [K], the image decoded there [C, H, W] and its PNG: each view
        # sets them through _show
        self._z: Tensor = torch.zeros(self.K)
        self._image: Optional[Tensor] = None
        self._png = b""

    # state
    @property
    def z(self) -> Tensor:
        """The current code ``[K]`` (a copy, on the CPU)."""
        return self._z.clone()

    image = read_only("The decoded image the view shows, ``[C, H, W]`` (CPU, float in [0, 1]).")
    png = read_only("The current image as the PNG the widget shows (upscaled, nearest neighbour).")

    def _show(self, image: Tensor) -> None:
        """Make ``image`` ``[C, H, W]`` the current image."""
        self._image = image
        self._png = png_bytes(to_uint8(image), self.scale)

    @staticmethod
    def _point(point_xy) -> Tensor:
        """A point ``(u, v)`` of the pad as a tensor ``[2]``."""
        uv = torch.as_tensor(point_xy, dtype=torch.float32).reshape(-1)
        if uv.shape != (2,):
            raise ValueError(f"point_xy must be a point (u, v) of the pad, got {point_xy!r}")
        return uv

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
        batch_of("x", x, self.data_shape, batch="N", min_size=1)
        n = min(num_points, x.shape[0])
        if labels is not None:
            labels = labels.cpu() if torch.is_tensor(labels) else torch.as_tensor(np.asarray(labels))
            if labels.dim() != 1 or labels.shape[0] < n:
                raise ValueError(f"labels must have shape [N] = [{x.shape[0]}], got "
                                 f"{list(labels.shape)}")
            labels = labels[:n].long()
        return x[:n].detach().to(self.device), labels

    def _encode(self, x: Tensor) -> Tensor:
        """The means of q(z|x) ``[N, K]``, on the CPU (for a flow q, see :func:`central_code`)."""
        with evaluating(self.model):
            codes = [central_code(self.model.inf_model(chunk))[0]
                     for chunk in x.split(_ENCODE_BATCH)]
        return torch.cat(codes).float().cpu()

    def _bounds(self, z_range: float) -> tuple[Tensor, Tensor]:
        """Slider ranges ``[K]``: +-z_range, widened to most codes and the prior's 2-sd boxes."""
        low = torch.full((self.K,), -z_range)
        high = torch.full((self.K,), z_range)
        if self.codes is not None:
            q = torch.quantile(self.codes, torch.tensor([0.005, 0.995]), dim=0)  # [2, K]
            low, high = torch.minimum(low, q[0]), torch.maximum(high, q[1])
        for _, loc, scale in self.prior_components():
            low = torch.minimum(low, loc - ELLIPSE_SD * scale)
            high = torch.maximum(high, loc + ELLIPSE_SD * scale)
        # round outwards to halves, for tidy slider ends
        return torch.floor(low * 2) / 2, torch.ceil(high * 2) / 2

    # the model
    def prior(self) -> td.Distribution:
        """p(z) with batch_shape ``()`` and event_shape ``(K,)``."""
        return self.model.gen_model.prior(())

    def prior_components(self) -> list[tuple[float, Tensor, Tensor]]:
        """``(weight, loc [K], scale [K])`` of the prior's Gaussian components (detached, CPU)."""
        with torch.no_grad():
            return gaussian_components(self.prior())

    def decode(self, z: Tensor, mode: str = "mean") -> Tensor:
        """Decode codes ``[N, K]`` into images ``[N, C, H, W]`` on the CPU.

        Args:
            z: codes, on any device.
            mode: ``"mean"`` for the decoder mean E[x|z], ``"sample"`` for a draw x ~ p(x|z).
        """
        one_of("mode", mode, MODES)
        with evaluating(self.model), one_cpu_thread(self.device):
            px_z = self.model.gen_model.obs_model(z.to(self.device))  # batch_shape [N]
            x = px_z.mean if mode == "mean" else px_z.sample()
        return as_images(x, self.data_shape).float().cpu()

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
        """Make the widgets show the state (inside :meth:`_mirroring`)."""

    @contextmanager
    def _mirroring(self) -> Iterator[None]:
        """While the widgets are set to mirror the state, their callbacks do not act."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _from_user(self, action: Callable) -> Callable:
        """A widget callback that runs ``action`` on a user's change, not on :meth:`_sync`'s."""
        def callback(*args) -> None:
            if not self._syncing:
                action(*args)
        return callback

    def _update(self) -> None:
        """After a change of state: mirror it in the widgets, if they exist."""
        if self._widget is not None:
            self._sync()

    def static_figure(self) -> Figure:
        """A matplotlib figure of the view's current state, for places without widgets."""
        raise NotImplementedError

    def static_png(self) -> bytes:
        """:meth:`static_figure` as PNG bytes."""
        return figure_png(self.static_figure())

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = {"text/plain": repr(self)}
        if not grading_mode():  # the grader draws no figure (course.submission)
            bundle["image/png"] = base64.b64encode(self.static_png()).decode("ascii")
        if live_widgets_possible():
            bundle.update(self.widget._repr_mimebundle_())
            bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        n = 0 if self.codes is None else self.codes.shape[0]
        return f"{type(self).__name__}(K={self.K}, images={list(self.image_shape)}, test codes={n})"

    # widgets shared by the views
    def _image_widget(self, css_class: str, width: Optional[int] = None):
        w = ipywidgets()

        width = width or self.scale * self.image_shape[-1]
        height = width * self.image_shape[-2] // self.image_shape[-1]
        image = w.Image(format="png", layout=w.Layout(width=f"{width}px", height=f"{height}px",
                                                      border="1px solid #ccc"))
        image.add_class(css_class)
        return image

    def _thumbnail_png(self, i: int) -> bytes:
        image = self.x[i].reshape(self.image_shape).float()
        return png_bytes(to_uint8(image), scale=max(1, self.scale // 2))

    def _label_text(self, i: int) -> str:
        if self.labels is None:
            return f"#{i}"
        label = int(self.labels[i])
        name = self.class_names[label] if self.class_names and 0 <= label < len(self.class_names) \
            else str(label)
        return f"#{i} · {name}"


