"""The ipywidgets side of the latent views: the one place ipywidgets (and ipympl) is imported.

Both are imported on first use, so that ``import dpm_core.widgets`` stays cheap and works
where they are not installed: the views then show their static PNG.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ..grading import grading_mode
from .render import figure_png

__all__ = ["ipywidgets", "live_widgets_possible", "Pad", "interactive_canvas", "header", "caption"]

_PAD_FIGSIZE = (6.2, 4.6)
_PAD_DPI = 80


def ipywidgets():
    """The ``ipywidgets`` module (raises ImportError where it is not installed)."""
    import ipywidgets as w

    return w


def live_widgets_possible() -> bool:
    """Whether a widget front end can exist: an IPython kernel, ipywidgets, and no grading."""
    if grading_mode():
        return False
    try:
        ipywidgets()
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Pad:
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
        w = ipywidgets()

        self.figure = Figure(figsize=_PAD_FIGSIZE, dpi=_PAD_DPI, layout="constrained")
        self.ax = self.figure.add_subplot()
        self.overlays = list(draw(self.ax))
        self._fit_height(legend_outside)
        self.figure.get_layout_engine().execute(self.figure)
        self.figure.set_layout_engine("none")
        self.on_pick = on_pick
        self._dragging = False
        self._background = None
        self.canvas = interactive_canvas(self.figure)
        if self.canvas is not None:
            for artist in self.overlays:
                artist.set_animated(True)
            self.canvas.mpl_connect("draw_event", self._on_draw)
            self.canvas.mpl_connect("button_press_event", self._on_press)
            self.canvas.mpl_connect("motion_notify_event", self._on_motion)
            self.canvas.mpl_connect("button_release_event", self._on_release)
            self.widget = self.canvas
        else:
            self.widget = w.Image(value=figure_png(self.figure), format="png")
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
            self.widget.value = figure_png(self.figure)
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


def interactive_canvas(fig: Figure):
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


def header(title: str, subtitle: str):
    w = ipywidgets()

    return w.HTML(f"<div style='font-size:15px;font-weight:600;margin:2px 0'>{title}</div>"
                  f"<div style='color:#555;margin-bottom:4px'>{subtitle}</div>")


def caption(text: str):
    w = ipywidgets()

    return w.HTML(f"<div style='color:#444;text-align:center'>{text}</div>")


