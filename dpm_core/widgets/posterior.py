"""The posterior view: one test image, draws from q(z|x), and where they sit against p(z)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributions as td
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..plotting import image_grid
from ..utils import evaluating, index, positive_int, read_only
from ..flows import central_code
from .geometry import gaussian_components, nearest
from .render import (MARKER_COLOUR, SAMPLE_COLOUR, STATIC_DPI, ellipse, grid_png, move_ellipse,
                     png_bytes, to_uint8)
from .ui import Pad, caption, header, ipywidgets
from .view import ImagesLike, LatentView, one_cpu_thread

__all__ = ["PosteriorView"]

#: draws that show the shape of a q(z|x) without Gaussian components (a flow)
CLOUD_SIZE = 500


class PosteriorView(LatentView):
    """One test image x, draws z_s ~ q(z|x), their reconstructions, and the prior around them.

    The pad shows p(z) (density contours for K = 2, draws otherwise), the test codes
    faintly, the draws from q(z|x) and its 2-sd ellipse (one per component of a
    mixture); clicking on the pad picks the test image whose code is nearest. A
    normalising-flow q(z|x) has no ellipse: a faint cloud of ``CLOUD_SIZE`` further
    draws shows its shape, and its centre f(mu), the image of its base Gaussian's
    mean, stands in for its mean (see :func:`central_code`). The text reports the rate
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
        self.num_samples = positive_int("num_samples", num_samples)
        self.select(i)

    i = read_only("Index of the test image.")
    samples = read_only("The draws z_s ~ q(z|x), ``[S, K]`` (CPU).")
    reconstructions = read_only("The decoder means E[x|z_s] of the draws, ``[S, C, H, W]`` (CPU).")

    def select(self, i: int) -> None:
        """Show test image i, with fresh draws from q(z|x_i)."""
        self._i = index("i", i, self.codes.shape[0], "images")
        self.resample()

    def resample(self) -> None:
        """Draw the S codes from q(z|x) again."""
        x = self.x[self._i][None]  # [1, C, H, W]
        with evaluating(self.model), one_cpu_thread(self.device):
            qz = self.model.inf_model(x)  # batch_shape [1]
            pz = self.model.gen_model.prior((1,))
            z = qz.sample((self.num_samples,))  # [S, 1, K]
            log_px_z = self.model.gen_model.obs_model(z).log_prob(x)  # [S, 1]
            try:
                rate, exact = td.kl_divergence(qz, pz), True
            except NotImplementedError:
                rate, exact = (qz.log_prob(z) - pz.log_prob(z)).mean(0), False
            qz_one = self.model.inf_model(x[0])  # batch_shape ()
            components = gaussian_components(qz_one)
            cloud = None if components else qz.sample((CLOUD_SIZE,))[:, 0]  # [CLOUD_SIZE, K]
            _, is_mean = central_code(qz_one)
        self._qz_components = components
        self._cloud = cloud.float().cpu() if cloud is not None else None
        self._centre = "mean of q(z|x)" if is_mean else "centre of q(z|x)"
        self._samples = z[:, 0].float().cpu()
        self._rate, self._rate_exact = float(rate), exact
        self._log_px_z = log_px_z[:, 0].float().cpu()
        self._reconstructions = self.decode(self._samples)
        self._z = self.codes[self._i].clone()  # the mean (or a flow's centre) of q(z|x)
        self._show(self.decode(self._z[None])[0])
        self._update()

    def pick(self, point_xy) -> None:
        """Show the test image whose code is nearest to a pad point."""
        self.select(nearest(self.plane.project(self.codes), self._point(point_xy)))

    def info_text(self) -> str:
        """The rate and the reconstruction log-likelihoods of the current draws."""
        how = "" if self._rate_exact else f" (Monte Carlo, {self.num_samples} draws)"
        lp = self._log_px_z
        return (f"rate KL(q(z|x) || p(z)) = {self._rate:.2f} nats{how}; "
                f"log p(x|z_s) of the draws: mean {float(lp.mean()):.1f}, "
                f"from {float(lp.min()):.1f} to {float(lp.max()):.1f}")

    # widgets
    def _build(self):
        w = ipywidgets()

        self._original = self._image_widget("dpm-original")
        self._decoded = self._image_widget("dpm-decoded")
        self._grid = w.Image(format="png")
        self._grid.add_class("dpm-samples")
        self._title = caption("")
        self._info = w.HTML()
        self._index = w.BoundedIntText(min=0, max=self.codes.shape[0] - 1, description="test image",
                                       layout=w.Layout(width="170px"),
                                       style={"description_width": "75px"})
        self._index.observe(self._from_user(lambda change: self.select(change["new"])),
                            names="value")
        again = w.Button(description="new draws", icon="refresh", layout=w.Layout(width="120px"))
        again.on_click(lambda _: self.resample())

        def column(image, text):
            return w.VBox([image, caption(text)], layout=w.Layout(align_items="center"))

        right = w.VBox([
            self._title,
            w.HBox([column(self._original, "x"),
                    column(self._decoded, f"E[x|z] at the {self._centre}")]),
            w.HBox([self._index, again]),
            caption(f"E[x|z_s] for {self.num_samples} draws z_s ~ q(z|x)"),
            self._grid, self._info,
        ], layout=w.Layout(margin="0 0 0 12px", align_items="center"))
        self._pad = Pad(self._draw_pad, self.pick)
        hint = "click on the plot to pick a test image" if self._pad.canvas else \
            "type an image number"
        return w.VBox([header("The posterior q(z|x) of one image",
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
        self._cloud_artist = None if self._cloud is None else ax.scatter(
            [], [], s=4, color=MARKER_COLOUR, alpha=0.3, linewidths=0, zorder=4,
            label=f"q(z|x), {CLOUD_SIZE} draws")
        self._samples_artist = ax.scatter([], [], s=28, color=SAMPLE_COLOUR, edgecolors="black",
                                          linewidths=0.6, zorder=5, label="z_s ~ q(z|x)")
        (self._mean_artist,) = ax.plot([], [], marker="*", ms=13, mfc=MARKER_COLOUR, mec="white",
                                       ls="none", zorder=6, label=self._centre)
        # one ellipse per Gaussian component of q(z|x) (their number does not change)
        self._q_ellipses = [
            ax.add_patch(ellipse(torch.zeros(2), torch.eye(2), fill=False, lw=1.8,
                                  ec=MARKER_COLOUR, zorder=6))
            for _ in self._qz_components]
        legend = ax.legend(loc="upper right", fontsize="small", framealpha=0.9, markerscale=1.5)
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)
        ax.set_title("where q(z|x) sits against the prior", fontsize=11)
        cloud = [] if self._cloud_artist is None else [self._cloud_artist]
        return cloud + [self._samples_artist, self._mean_artist] + self._q_ellipses

    def _sync(self) -> None:
        with self._mirroring():
            with self._widget.hold_sync():
                self._original.value = png_bytes(to_uint8(self.x[self._i].reshape(self.image_shape)),
                                            self.scale)
                self._decoded.value = self._png
                self._grid.value = grid_png(self._reconstructions,
                                             nrow=min(8, self.num_samples), width=500)
                self._title.value = f"<b>test image {self._label_text(self._i)}</b>"
                self._index.value = self._i
                self._info.value = ("<div style='color:#333;max-width:440px'>"
                                    f"{self.info_text()}</div>")
            self._samples_artist.set_offsets(self.plane.project(self._samples).numpy())
            if self._cloud_artist is not None:
                self._cloud_artist.set_offsets(self.plane.project(self._cloud).numpy())
            u, v = self.plane.project(self.codes[self._i]).tolist()
            self._mean_artist.set_data([u], [v])
            for patch, (weight, loc, scale) in zip(self._q_ellipses, self._qz_components):
                move_ellipse(patch, self.plane.project(loc), self.plane.covariance(scale))
                patch.set_alpha(max(0.3, weight))
            self._pad.refresh()

    def static_figure(self) -> Figure:
        """The image, its reconstructions from the draws, and the draws against the prior."""
        fig = Figure(figsize=(11.0, 4.6), dpi=STATIC_DPI, layout="constrained")
        ax_pad, ax_x, ax_grid = fig.subplots(1, 3, width_ratios=[1.3, 0.45, 1.1])
        uv = self.plane.project(self.codes)
        ax_pad.scatter(uv[:, 0], uv[:, 1], s=5, color="#1f77b4", alpha=0.15, linewidths=0,
                       label="test codes")
        self._draw_codes(ax_pad, points=False)
        self._draw_prior(ax_pad)
        if self._cloud is not None:
            cloud = self.plane.project(self._cloud)
            ax_pad.scatter(cloud[:, 0], cloud[:, 1], s=4, color=MARKER_COLOUR, alpha=0.3,
                           linewidths=0, label=f"q(z|x), {CLOUD_SIZE} draws", zorder=4)
        samples = self.plane.project(self._samples)
        ax_pad.scatter(samples[:, 0], samples[:, 1], s=28, color=SAMPLE_COLOUR,
                       edgecolors="black", linewidths=0.6, label="z_s ~ q(z|x)", zorder=5)
        u, v = self.plane.project(self.codes[self._i]).tolist()
        ax_pad.plot([u], [v], marker="*", ms=13, mfc=MARKER_COLOUR, mec="white", ls="none",
                    label=self._centre, zorder=6)
        ax_pad.legend(loc="upper right", fontsize="small")
        ax_pad.set_title("q(z|x) against the prior")
        pair = torch.stack([self.x[self._i].reshape(self.image_shape).float().cpu(), self._image])
        ax_x.imshow(image_grid(pair, nrow=1), interpolation="nearest")
        ax_x.set_axis_off()
        ax_x.set_title(f"x (top), E[x|z] at the\n{self._centre} (bottom)", fontsize=10)
        ax_grid.imshow(image_grid(self._reconstructions, nrow=min(8, self.num_samples)),
                       interpolation="nearest")
        ax_grid.set_axis_off()
        ax_grid.set_title(f"E[x|z_s], {self.num_samples} draws z_s ~ q(z|x)")
        fig.suptitle(f"Posterior of test image {self._label_text(self._i)} (static view); "
                     f"rate {self._rate:.1f} nats")
        return fig
