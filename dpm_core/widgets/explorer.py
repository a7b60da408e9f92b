"""The latent explorer: move a code z and watch the decoder answer."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributions as td
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from ..plotting import image_grid
from ..utils import index, one_of, read_only
from .geometry import z_name
from .render import MARKER_COLOUR, STATIC_DPI, ellipse, move_ellipse, vector_text
from .ui import Pad, caption, header, ipywidgets
from .view import MODES, ImagesLike, LatentView

__all__ = ["LatentExplorer"]


class LatentExplorer(LatentView):
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
    mode = read_only('``"mean"`` (the decoder mean) or ``"sample"`` (a draw from p(x|z)).')
    component = read_only("The selected mixture component, or None.")

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
        k = index("k", k, self.K, "images")
        z = self._z.clone()
        z[k] = float(value)
        self.set_z(z)

    def pick(self, point_xy) -> None:
        """Move z to a point ``(u, v)`` of the pad's plane (what a click on the pad does).

        For K = 2 the point is z itself; otherwise z moves within the plane and keeps
        its other coordinates.
        """
        self.set_z(self.plane.lift(self._point(point_xy), self._z))

    def set_mode(self, mode: str) -> None:
        """Show the decoder mean (``"mean"``) or a draw x ~ p(x|z) (``"sample"``)."""
        self._mode = one_of("mode", mode, MODES)
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
        c = index("c", c, len(self._components), "images")
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
        return (f"component {self._component}: weight {w_c:.2f}, mean {vector_text(loc)}, "
                f"sd {vector_text(scale)}")

    def _render(self) -> None:
        self._show(self.decode(self._z[None], self._mode)[0])
        self._update()

    # widgets
    def _build(self):
        w = ipywidgets()

        self._decoded = self._image_widget("dpm-decoded")
        self._sliders = []
        for k in range(self.K):
            lo, hi = float(self.low[k]), float(self.high[k])
            slider = w.FloatSlider(value=0.0, min=lo, max=hi, step=round((hi - lo) / 200, 4),
                                   description=z_name(k), continuous_update=True,
                                   readout_format=".2f",
                                   layout=w.Layout(width="340px"),
                                   style={"description_width": "24px"})
            slider.add_class(f"dpm-z{k}")
            slider.observe(self._from_user(lambda change, k=k: self.set_coordinate(k, change["new"])),
                           names="value")
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
            self._component_select.observe(
                self._from_user(lambda change: self.set_component(change["new"])), names="value")
            controls.append(self._component_select)
        controls.append(self._info)

        columns = 1 if self.K <= 4 else (2 if self.K <= 8 else 3)
        sliders = w.GridBox(self._sliders, layout=w.Layout(
            grid_template_columns=f"repeat({columns}, 345px)", grid_gap="0 8px"))
        slider_box = w.VBox([caption(f"<b>latent code z</b> ({self.K} coordinates)"), sliders])

        right = [self._decoded] + controls
        if self.K <= 4:
            right.append(slider_box)
        self._pad = Pad(self._draw_pad, self.pick, legend_outside=self.labels is not None)
        top = w.HBox([self._pad.widget, w.VBox(right, layout=w.Layout(margin="0 0 0 12px"))],
                     layout=w.Layout(align_items="flex-start"))
        parts = [header("Latent explorer", self._subtitle()), top]
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
            ax.add_patch(ellipse(self.plane.project(loc), self.plane.covariance(scale),
                                  fill=False, lw=1.0, ls="--", ec="0.45"))
            u, v = self.plane.project(loc).tolist()
            ax.annotate(str(c), (u, v), color="0.2", fontsize=9, fontweight="bold", ha="center",
                        va="center", bbox={"boxstyle": "circle,pad=0.2", "fc": "white",
                                           "ec": "0.45", "alpha": 0.85}, zorder=4)
        self._selected_ellipse = ellipse(torch.zeros(2), torch.eye(2), fill=False, lw=2.2,
                                          ec=MARKER_COLOUR, visible=False)
        ax.add_patch(self._selected_ellipse)
        (self._marker,) = ax.plot([], [], marker="o", ms=13, mfc="none", mec=MARKER_COLOUR,
                                  mew=2.5, ls="none", zorder=5)
        (self._cross,) = ax.plot([], [], marker="+", ms=13, mec=MARKER_COLOUR, mew=1.5,
                                 ls="none", zorder=5)
        ax.set_title("codes of test images: click to pick z" if self.codes is not None
                     else "latent plane: click to pick z", fontsize=11)
        return [self._selected_ellipse, self._marker, self._cross]

    def _sync(self) -> None:
        with self._mirroring():
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

    def _info_html(self) -> str:
        what = "decoder mean E[x|z]" if self._mode == "mean" else "a draw x ~ p(x|z)"
        lines = [f"showing the {what} at z = {vector_text(self._z, 6)}"]
        if self._component is not None:
            lines.append(self.component_text())
        return "<div style='color:#333;max-width:420px'>" + "<br>".join(lines) + "</div>"

    def _sync_pad(self) -> None:
        u, v = self.plane.project(self._z).tolist()
        self._marker.set_data([u], [v])
        self._cross.set_data([u], [v])
        if self._component is not None:
            _, loc, scale = self._components[self._component]
            move_ellipse(self._selected_ellipse, self.plane.project(loc),
                          self.plane.covariance(scale))
        self._selected_ellipse.set_visible(self._component is not None)
        self._pad.refresh()

    def static_figure(self, steps: int = 11) -> Figure:
        """The pad and a grid of decoder means over the pad's plane (through the current z)."""
        fig = Figure(figsize=(11.5, 5.0), dpi=STATIC_DPI, layout="constrained")
        ax_pad, ax_grid = fig.subplots(1, 2, width_ratios=[1.15, 1])
        self._draw_codes(ax_pad)
        u, v = self.plane.project(self._z).tolist()
        ax_pad.plot([u], [v], marker="o", ms=12, mfc="none", mec=MARKER_COLOUR, mew=2.5)
        for w_c, loc, scale in (self._components if self._is_mixture else []):
            ax_pad.add_patch(ellipse(self.plane.project(loc), self.plane.covariance(scale),
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

