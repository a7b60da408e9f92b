"""The interpolator: walk between the codes of two test images (straight or spherical)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..utils import index, one_of, positive_int, read_only
from .geometry import PATH_FNS, PATHS, nearest
from .render import MARKER_COLOUR, PATH_COLOUR, STATIC_DPI, ends_and_paths_grid, grid_png
from .ui import Pad, caption, header, ipywidgets
from .view import ImagesLike, LatentView

__all__ = ["Interpolator"]

#: the static figure's images are at most about this many pixels wide (a notebook's output
#: area), and the figure at least the second, for its title
_STATIC_WIDTH, _STATIC_MIN_WIDTH = 1080, 720


class Interpolator(LatentView):
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
        self.steps = positive_int("steps", steps)
        if j is None:
            i = index("i", i, n, "images")
            others = [] if self.labels is None else \
                (self.labels != self.labels[i]).nonzero().flatten().tolist()
            j = others[0] if others else (i + 1) % n
        self._i, self._j, self._t, self._path = 0, 1, 0.5, "linear"
        self._next_end = 0
        self.select(i, j)

    i = read_only("Index of image A.")
    j = read_only("Index of image B.")
    t = read_only("Where on the path: 0 at A, 1 at B.")
    path = read_only('``"linear"`` or ``"spherical"``.')

    def path_codes(self, steps: Optional[int] = None) -> Tensor:
        """Codes ``[T, K]`` at ``steps`` evenly spaced t from 0 to 1 along the path."""
        t = torch.linspace(0.0, 1.0, steps or self.steps)
        return PATH_FNS[self._path](self._z_a, self._z_b, t)

    def select(self, i: int, j: int) -> None:
        """Interpolate between test images i (A) and j (B)."""
        n = self.codes.shape[0]
        self._i, self._j = index("i", i, n, "images"), index("j", j, n, "images")
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
        self._path = one_of("path", path, PATHS)
        self._render(strip=True)

    def pick(self, point_xy) -> None:
        """Make the test image whose code is nearest to a pad point the next end (A, B, A, ...)."""
        uv = self._point(point_xy)
        closest = nearest(self.plane.project(self.codes), uv)
        if self._next_end == 0:
            self.select(closest, self._j)
        else:
            self.select(self._i, closest)
        self._next_end = 1 - self._next_end

    def random_pair(self, generator: Optional[torch.Generator] = None) -> None:
        """Pick two different test images at random."""
        i, j = torch.randperm(self.codes.shape[0], generator=generator)[:2].tolist()
        self.select(i, j)

    def _render(self, strip: bool = False) -> None:
        self._z = PATH_FNS[self._path](self._z_a, self._z_b, self._t)
        self._show(self.decode(self._z[None])[0])
        if strip:
            self._strip = self.decode(self.path_codes())  # [T, C, H, W]
        if self._widget is not None:
            self._sync(full=strip)

    # widgets
    def _build(self):
        w = ipywidgets()

        self._decoded = self._image_widget("dpm-decoded")
        thumb = max(1, self.scale // 2) * self.image_shape[-1]
        self._thumb_a = self._image_widget("dpm-image-a", thumb)
        self._thumb_b = self._image_widget("dpm-image-b", thumb)
        self._caption_a, self._caption_b = caption(""), caption("")
        self._caption_t = caption("")
        n = self.codes.shape[0]
        self._index_a = w.BoundedIntText(min=0, max=n - 1, description="A: image",
                                         layout=w.Layout(width="150px"),
                                         style={"description_width": "60px"})
        self._index_b = w.BoundedIntText(min=0, max=n - 1, description="B: image",
                                         layout=w.Layout(width="150px"),
                                         style={"description_width": "60px"})
        for box in (self._index_a, self._index_b):
            box.observe(self._from_user(lambda _: self.select(self._index_a.value,
                                                             self._index_b.value)),
                        names="value")
        shuffle = w.Button(description="random pair", icon="random", layout=w.Layout(width="120px"))
        shuffle.on_click(lambda _: self.random_pair())
        self._t_slider = w.FloatSlider(min=0.0, max=1.0, step=0.01, description="t",
                                       continuous_update=True, readout_format=".2f",
                                       layout=w.Layout(width="420px"),
                                       style={"description_width": "20px"})
        self._t_slider.add_class("dpm-t")
        self._t_slider.observe(self._from_user(lambda change: self.set_t(change["new"])),
                               names="value")
        self._path_buttons = w.ToggleButtons(
            options=[("straight line", "linear"), ("spherical (slerp)", "spherical")],
            style={"button_width": "130px"},
            tooltips=["(1 - t) z_A + t z_B", "along the great circle between z_A and z_B"])
        self._path_buttons.observe(self._from_user(lambda change: self.set_path(change["new"])),
                                   names="value")
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
                        caption("the path at 9 points, A to B"), self._strip_image],
                       layout=w.Layout(margin="0 0 0 12px", align_items="center"))
        self._pad = Pad(self._draw_pad, self.pick, legend_outside=self.labels is not None)
        pad_hint = "click on the plot to pick A, then B" if self._pad.canvas else \
            "type image numbers"
        return w.VBox([header("Interpolation in latent space",
                               f"from z_A to z_B, the means of q(z|x) for two test images · "
                               f"{pad_hint}"),
                       w.HBox([self._pad.widget, right],
                              layout=w.Layout(align_items="flex-start"))])

    def _draw_pad(self, ax: Axes) -> list:
        self._draw_codes(ax, alpha=0.35)
        (self._path_line,) = ax.plot([], [], color=PATH_COLOUR, lw=2.0, zorder=4)
        (self._ends,) = ax.plot([], [], ls="none", marker="s", ms=8, mfc="white",
                                mec=PATH_COLOUR, mew=2, zorder=5)
        (self._marker,) = ax.plot([], [], marker="o", ms=12, mfc=MARKER_COLOUR, mec="white",
                                  mew=1.5, ls="none", zorder=6)
        self._label_a = ax.annotate("A", (0, 0), xytext=(6, 6), textcoords="offset points",
                                    fontweight="bold", zorder=7)
        self._label_b = ax.annotate("B", (0, 0), xytext=(6, 6), textcoords="offset points",
                                    fontweight="bold", zorder=7)
        ax.set_title("test codes: the path from A to B", fontsize=11)
        return [self._path_line, self._ends, self._marker, self._label_a, self._label_b]

    def _sync(self, full: bool = True) -> None:
        with self._mirroring():
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
                self._strip_image.value = grid_png(self._strip, nrow=self.steps, width=560)
            line = self.plane.project(self.path_codes(64))  # [64, 2]
            self._path_line.set_data(line[:, 0], line[:, 1])
            ends = self.plane.project(torch.stack([self._z_a, self._z_b]))
            self._ends.set_data(ends[:, 0], ends[:, 1])
            self._label_a.xy, self._label_b.xy = tuple(ends[0].tolist()), tuple(ends[1].tolist())
            u, v = self.plane.project(self._z).tolist()
            self._marker.set_data([u], [v])
            self._pad.refresh()

    def static_figure(self) -> Figure:
        """The decoded paths from A to B, straight (top row) and spherical (bottom row).

        Each row starts with test image A and ends with test image B; between them the
        decoder mean E[x|z(t)] at ``steps`` evenly spaced t. The images are shown at an
        integer scale, the widget's thumbnail size when the figure stays under about
        :data:`_STATIC_WIDTH` pixels, so that their pixels stay square and sharp, and the
        figure is cut to them and their labels.
        """
        t = torch.linspace(0.0, 1.0, self.steps)
        paths = torch.stack([self.decode(PATH_FNS[path](self._z_a, self._z_b, t))
                             for path in PATHS])  # [R, T, C, H, W]
        a, b = self.x[[self._i, self._j]].reshape((2,) + self.image_shape).float().cpu()
        grid, xs, ys = ends_and_paths_grid(a, b, paths)
        scale = max(1, min(self.scale // 2, _STATIC_WIDTH // grid.shape[1]))
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
        xs, ys = [scale * x for x in xs], [scale * y for y in ys]
        thumb = scale * self.image_shape[-1]

        # the layout in pixels: the title, the t labels, the images, the names of A and B
        left, right, top, bottom = 30, 12, 78, 44
        height, width = grid.shape[:2]
        fig_w, fig_h = max(left + width + right, _STATIC_MIN_WIDTH), top + height + bottom
        fig = Figure(figsize=(fig_w / STATIC_DPI, fig_h / STATIC_DPI), dpi=STATIC_DPI)
        ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
        # the axes holds the array at one figure pixel per array pixel
        ax.imshow(grid, interpolation="nearest", extent=(0, width, height, 0))
        ax.set_axis_off()

        text = dict(clip_on=False, fontsize=9)
        for name, x, end in (("A", xs[0], self._i), ("B", xs[-1], self._j)):
            ax.text(x, -4, name, ha="center", va="bottom", fontweight="bold", fontsize=11,
                    clip_on=False)
            ax.text(x, height + 4, self._label_text(end).replace(" · ", "\n"), ha="center",
                    va="top", **text)
        for x, value in zip(xs[1:-1], t.tolist()):
            ax.text(x, -4, f"t = {value:.3g}" if value == 0 else f"{value:.3g}", ha="center",
                    va="bottom", **text)
        ax.text((xs[1] + xs[-2]) / 2, height + 4, "E[x|z(t)], the decoder mean along the path",
                ha="center", va="top", color="0.3", **text)
        if thumb >= 60:  # the names fit beside the rows
            for y, name in zip(ys, ("straight", "spherical")):
                ax.text(-6, y, name, ha="right", va="center", rotation=90, **text)

        fig.text(left / fig_w, 1 - 8 / fig_h,
                 f"Interpolation from test image A ({self._label_text(self._i)}) "
                 f"to test image B ({self._label_text(self._j)})",
                 ha="left", va="top", fontsize=12, fontweight="bold")
        fig.text(left / fig_w, 1 - 30 / fig_h,
                 "z(t) from z_A to z_B, the means of q(z|x): straight line (top row), "
                 "spherical path, slerp (bottom row)",
                 ha="left", va="top", fontsize=10, color="0.3")
        return fig
