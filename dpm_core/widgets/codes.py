"""The code explorer: flip the bits (or change the classes) of a discrete code, decode it live.

Shape letters as in the package, and as in :mod:`dpm_core.discrete`: K the code's length, L
the number of categorical variables and C the classes of each (K = L * C); P the images of
the strip. C stands for the image channels only inside an image shape ``[C, H, W]``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..discrete.codes import code_kind, code_mode
from ..utils import evaluating, index, one_of, positive_int, read_only
from .geometry import z_name
from .render import STATIC_DPI, labelled_strip, png_bytes, to_uint8
from .ui import header, ipywidgets
from .view import MODES, ImagesLike, LatentView

__all__ = ["CodeExplorer"]
_STRIP_BEST = 3  # how many of the strongest changes the text names


class CodeExplorer(LatentView):
    """Flip the bits of a binary code, or change the class of a categorical variable, and watch
    the decoder answer.

    The current code z is K numbers in {0, 1}: K bits, or L one-hot blocks of C classes
    (K = L * C) for a categorical code. The image is the decoder mean E[x|z] or, in
    ``"sample"`` mode, a draw x ~ p(x|z). Below it, the *strip* shows what each single
    change of z would do: the decoder means of z with one bit flipped, for a page of
    ``page_size`` bits (binary), or of z with one variable set to each of its C classes
    (categorical); all of them come from one batched forward pass, and their mean
    absolute pixel change from E[x|z] (``effects``) says which units matter here. The
    strip shows decoder means in either mode: the noise of draws would hide the effect.

    Args:
        model: an :class:`~dpm_core.nvil.NVIL` whose prior is a binary code
            (:class:`~dpm_core.discrete.BernoulliPriorNet`) or a categorical one
            (:class:`~dpm_core.discrete.OneHotPriorNet`); its q(z|x) is of the same kind.
        test_data: test images ``[N, C, H, W]`` (model inputs) or an :class:`ImageData`
            (optional), for :meth:`encode`.
        class_names: names of the test images' labels, e.g. ``FASHION_MNIST_CLASSES``.
        labels: labels of the test images (default: the ImageData's own).
        page_size: bits per page of the strip (binary codes).
        device: where to decode; the model is moved there (default: where it is).
        num_points: at most this many test images are kept.
        image_size: the decoded image is shown about this many pixels wide.

    Raises:
        ValueError: if the prior is not a binary or categorical code (for a Gaussian,
            use :class:`LatentExplorer`), or an argument has the wrong shape or value.

    Example:
        >>> view = CodeExplorer(model, test_data, class_names=FASHION_MNIST_CLASSES)
        >>> view.encode(3)  # the most probable code of q(z|x_3)
        >>> view.flip(17)  # binary code: flip bit 17
        >>> view.strip.shape  # E[x|z'] for every one-bit flip z' of the page
        torch.Size([40, 1, 28, 28])
    """

    def __init__(self, model: nn.Module, test_data: Optional[ImagesLike] = None,
                 class_names: Optional[Sequence[str]] = None, *, labels=None,
                 page_size: int = 40, device: Optional[Union[str, torch.device]] = None,
                 num_points: int = 2000, image_size: int = 196):
        super().__init__(model, test_data, labels, class_names, device, num_points,
                         image_size=image_size)
        self._kind, self.num_variables, self.num_classes = code_kind(self.prior())
        self.page_size = min(positive_int("page_size", page_size), self.K)
        self._mode, self._page, self._variable = "mean", 0, 0
        # where z came from: a text, that code, and the test image's index (or None)
        self._origin: Optional[tuple[str, Tensor, Optional[int]]] = None
        start = torch.zeros(self.K)
        if self._kind == "categorical":
            start.view(self.num_variables, self.num_classes)[:, 0] = 1.0  # class 0 everywhere
        self._set(start, None)

    # state
    kind = read_only('``"binary"`` or ``"categorical"``.')
    mode = read_only('``"mean"`` (the decoder mean) or ``"sample"`` (a draw from p(x|z)).')
    page = read_only("The page of bits the strip shows (binary codes).")
    variable = read_only("The variable whose classes the strip shows (categorical codes).")
    strip = read_only("The decoder means of the strip's codes, ``[P, C, H, W]`` (CPU).")
    effects = read_only("Mean absolute pixel change of each strip image from E[x|z], ``[P]``.")

    @property
    def classes(self) -> Tensor:
        """The class of each variable ``[L]`` (for a binary code, the bits themselves)."""
        if self._kind == "binary":
            return self._z.long()
        return self._z.view(self.num_variables, self.num_classes).argmax(-1)

    def set_code(self, z) -> None:
        """Make ``z`` ``[K]`` the current code and decode it.

        Raises:
            ValueError: if z does not have shape ``[K]``, is not in {0, 1}, or (categorical)
                a block of C does not hold exactly one 1.
        """
        self._set(self._checked(z), None)

    def flip(self, k: int) -> None:
        """Flip bit k of a binary code: z_k <- 1 - z_k.

        Raises:
            ValueError: for a categorical code (use :meth:`set_class`), or k out of range.
        """
        self._need("binary", "flip(k)", "set_class(l, c)")
        k = index("k", k, self.K, "bits")
        z = self._z.clone()
        z[k] = 1.0 - z[k]
        self._set(z, self._origin)

    def set_class(self, l: int, c: int) -> None:
        """Give categorical variable l the class c (its block becomes the one-hot e_c).

        Raises:
            ValueError: for a binary code (use :meth:`flip`), or l or c out of range.
        """
        self._need("categorical", "set_class(l, c)", "flip(k)")
        l = index("l", l, self.num_variables, "variables")
        c = index("c", c, self.num_classes, "classes")
        z = self._z.clone()
        block = z.view(self.num_variables, self.num_classes)  # [L, C], a view of z
        block[l] = 0.0
        block[l, c] = 1.0
        self._set(z, self._origin)

    def encode(self, i: int) -> None:
        """Move to the most probable code of q(z|x_i) (the mode of each factor) of test image i.

        Raises:
            ValueError: without test images, or if i is out of range.
        """
        if self.codes is None:
            raise ValueError("encode needs test images: pass test_data to CodeExplorer")
        i = index("i", i, self.codes.shape[0], "test images")
        # self.codes holds q's means: the probabilities of its factors
        z = code_mode(self.codes[i], self._kind, self.num_classes)
        self._set(z, (f"the mode of q(z|x) of test image {self._label_text(i)}", z, i))

    def sample_prior(self, seed: Optional[int] = None) -> None:
        """Move to a draw z ~ p(z); with a seed, the draw that ``torch.manual_seed(seed)`` gives
        (torch's random state is left as it was)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), \
                evaluating(self.model):
            if seed is not None:
                torch.manual_seed(seed)
            z = self.prior().sample().float().cpu()
        self._set(z, ("a draw from p(z)", z, None))

    def set_mode(self, mode: str) -> None:
        """Show the decoder mean (``"mean"``) or a draw x ~ p(x|z) (``"sample"``)."""
        self._mode = one_of("mode", mode, MODES)
        self._render()

    def resample(self) -> None:
        """Decode again: in ``"sample"`` mode, a fresh draw from p(x|z)."""
        self._render()

    def set_page(self, page: int) -> None:
        """Show in the strip the flips of bits ``page * page_size`` onwards (binary codes)."""
        self._need("binary", "set_page(page)", "set_variable(l)")
        self._page = index("page", page, self.num_pages, "pages of bits")
        self._render()

    def set_variable(self, l: int) -> None:
        """Show in the strip every class of variable l (categorical codes)."""
        self._need("categorical", "set_variable(l)", "set_page(page)")
        self._variable = index("l", l, self.num_variables, "variables")
        self._render()

    @property
    def num_pages(self) -> int:
        """Pages of bits in the strip (1 for a categorical code)."""
        return math.ceil(self.K / self.page_size) if self._kind == "binary" else 1

    def strip_changes(self) -> list[tuple[int, int]]:
        """What each strip image changes: ``(k, new bit)`` or ``(l, class)``."""
        if self._kind == "binary":
            return [(k, 1 - int(self._z[k])) for k in self._page_bits(self._page)]
        return [(self._variable, c) for c in range(self.num_classes)]

    def strip_codes(self) -> Tensor:
        """The codes the strip decodes, ``[P, K]``: z with one change each."""
        changes = self.strip_changes()
        codes = self._z.repeat(len(changes), 1)  # [P, K]
        rows = torch.arange(len(changes))
        if self._kind == "binary":
            bits = torch.tensor([k for k, _ in changes])
            codes[rows, bits] = 1.0 - codes[rows, bits]
        else:
            blocks = codes.view(len(changes), self.num_variables, self.num_classes)  # [P, L, C]
            blocks[:, self._variable] = torch.eye(self.num_classes)
        return codes

    def log_prior(self) -> float:
        """log p(z) of the current code, in nats."""
        with evaluating(self.model):
            return float(self.prior().log_prob(self._z.to(self.device)))

    def info_text(self) -> str:
        """Where the code came from, its log prior, and the strongest changes of the strip."""
        what = "decoder mean E[x|z]" if self._mode == "mean" else "a draw x ~ p(x|z)"
        lines = [f"showing the {what}; log p(z) = {self.log_prior():.2f} nats"]
        if self._origin is not None:
            text, z0, _ = self._origin
            changed = int((self.classes != self._classes_of(z0)).sum())
            unit = "bit" if self._kind == "binary" else "variable"
            lines.append(f"z is {text}" + (f", with {changed} {unit}{'s' * (changed != 1)} "
                                           f"changed" if changed else ""))
        best = self._effects.argsort(descending=True)[:_STRIP_BEST].tolist()
        changes = self.strip_changes()
        named = ", ".join(f"{self._change_text(*changes[j])} ({float(self._effects[j]):.3f})"
                          for j in best)
        lines.append(f"biggest changes in the strip: {named}")
        return "<br>".join(lines)

    def _page_bits(self, page: int) -> range:
        """The bits on a page of the strip."""
        return range(page * self.page_size, min(self.K, (page + 1) * self.page_size))

    def _need(self, kind: str, method: str, other: str) -> None:
        if self._kind != kind:
            raise ValueError(f"{method} is for {kind} codes; this model's code is {self._kind} "
                             f"({self._shape_text()}): use {other}")

    def _shape_text(self) -> str:
        if self._kind == "binary":
            return f"K = {self.K} bits"
        return f"L = {self.num_variables} variables of C = {self.num_classes} classes"

    def _change_text(self, unit: int, value: int) -> str:
        if self._kind == "binary":
            return f"{z_name(unit)}→{value}"
        return f"{z_name(unit)}={value}"

    def _classes_of(self, z: Tensor) -> Tensor:
        return z.long() if self._kind == "binary" else \
            z.view(self.num_variables, self.num_classes).argmax(-1)

    def _checked(self, z) -> Tensor:
        z = torch.as_tensor(z, dtype=torch.float32).detach().cpu()
        if tuple(z.shape) != (self.K,):
            raise ValueError(f"z must have shape [K] = [{self.K}], got {list(z.shape)}")
        bad = ((z != 0) & (z != 1)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"z must hold only 0s and 1s, got {z[bad[0]].item()!r} at index "
                             f"{bad[0]} ({len(bad)} entries are neither)")
        if self._kind == "categorical":
            ones = z.view(self.num_variables, self.num_classes).sum(-1)  # [L]
            wrong = (ones != 1).nonzero().flatten().tolist()
            if wrong:
                raise ValueError(
                    f"z must be one-hot in each of its L = {self.num_variables} blocks of "
                    f"C = {self.num_classes} (variable l is z[l*C:(l+1)*C]); variables {wrong} "
                    f"hold {[int(ones[l]) for l in wrong]} ones")
        return z.clone()

    def _set(self, z: Tensor, origin) -> None:
        self._z = z
        self._origin = origin
        self._render()

    def _render(self) -> None:
        codes = torch.cat([self._z[None], self.strip_codes()])  # [1 + P, K]
        means = self.decode(codes)  # [1 + P, C, H, W], one forward pass
        self._strip = means[1:]
        self._effects = (means[1:] - means[:1]).abs().flatten(1).mean(1)  # [P]
        self._show(means[0] if self._mode == "mean" else self.decode(self._z[None], "sample")[0])
        self._update()

    # the strip as one picture
    def strip_pixels(self) -> np.ndarray:
        """The strip as one RGB picture ``[h, w, 3]`` (uint8): each image upscaled, under it
        the change it shows and its effect (the strongest in red); for a categorical code, the
        current class framed."""
        changes = self.strip_changes()
        current = int(self.classes[self._variable]) if self._kind == "categorical" else None
        # the strongest few in red, where they stand out from many
        strongest = set(self._effects.argsort(descending=True)[:_STRIP_BEST].tolist()) \
            if len(changes) > 2 * _STRIP_BEST else set()
        labels = [(self._change_text(unit, value), f"Δ {float(effect):.3f}")
                  for (unit, value), effect in zip(changes, self._effects)]
        framed = [value == current for _, value in changes]
        return labelled_strip(self._strip, labels, strongest, framed)

    def _strip_title(self) -> str:
        if self._kind == "binary":
            bits = self._page_bits(self._page)
            return (f"what one flip does: E[x|z'] for each one-bit flip z' of z "
                    f"(bits {bits[0]}–{bits[-1]}); Δ = mean |pixel change|, largest in red")
        return (f"what one change does: E[x|z'] for z' = z with variable "
                f"{z_name(self._variable)} set to each class (framed: its class now)")

    # widgets
    def _build(self):
        w = ipywidgets()

        self._decoded = self._image_widget("dpm-decoded")
        self._mode_buttons = w.ToggleButtons(
            options=[("mean E[x|z]", "mean"), ("sample x ~ p(x|z)", "sample")],
            value=self._mode, style={"button_width": "150px"},
            tooltips=["the mean of p(x|z): pixel probabilities",
                      "one draw from p(x|z): what the model generates"])
        self._mode_buttons.observe(self._from_user(lambda change: self.set_mode(change["new"])),
                                   names="value")
        self._resample = w.Button(description="new draw", icon="refresh",
                                  layout=w.Layout(width="110px"), tooltip="draw x ~ p(x|z) again")
        self._resample.on_click(lambda _: self.resample())
        prior_button = w.Button(description="z ~ p(z)", icon="random",
                                layout=w.Layout(width="110px"),
                                tooltip="jump to a random code from the prior")
        prior_button.on_click(lambda _: self.sample_prior())
        buttons = [self._resample, prior_button]
        top_right = [self._mode_buttons, w.HBox(buttons)]
        if self.codes is not None:
            self._index = w.BoundedIntText(value=0, min=0, max=self.codes.shape[0] - 1,
                                           description="test image",
                                           layout=w.Layout(width="170px"),
                                           style={"description_width": "75px"})
            encode_button = w.Button(description="z = mode of q(z|x)", icon="arrow-right",
                                     layout=w.Layout(width="170px"),
                                     tooltip="start from the most probable code of this image")
            encode_button.on_click(lambda _: self.encode(self._index.value))
            self._index.observe(self._from_user(lambda change: self.encode(change["new"])),
                                names="value")
            self._original = self._image_widget("dpm-original", width=self.scale
                                                * self.image_shape[-1] // 2)
            self._original_caption = w.HTML()
            self._original_box = w.HBox([self._original, self._original_caption],
                                        layout=w.Layout(align_items="center"))
            top_right += [w.HBox([self._index, encode_button]), self._original_box]
        self._info = w.HTML()
        top_right.append(self._info)
        top = w.HBox([self._decoded, w.VBox(top_right, layout=w.Layout(margin="0 0 0 12px"))],
                     layout=w.Layout(align_items="flex-start"))

        self._strip_image = w.Image(format="png")
        self._strip_image.add_class("dpm-strip")
        self._strip_caption = _section("")
        strip_controls = []
        if self._kind == "binary":
            self._units = self._bit_toggles(w)
            code_box = w.GridBox(self._units, layout=w.Layout(
                grid_template_columns=f"repeat({min(20, self.K)}, 34px)", grid_gap="2px"))
            code_title = f"<b>the code z</b>: {self.K} bits, click one to flip it (blue = 1)"
            if self.num_pages > 1:
                self._strip_select = w.Dropdown(
                    options=[(f"bits {self._page_bits(p)[0]}–{self._page_bits(p)[-1]}", p)
                             for p in range(self.num_pages)],
                    description="flips of", style={"description_width": "60px"},
                    layout=w.Layout(width="200px"))
                self._strip_select.observe(
                    self._from_user(lambda change: self.set_page(change["new"])), names="value")
                strip_controls.append(self._strip_select)
        else:
            self._units = self._class_dropdowns(w)
            code_box = w.GridBox(self._units, layout=w.Layout(
                grid_template_columns=f"repeat({min(8, self.num_variables)}, 112px)",
                grid_gap="2px 6px"))
            code_title = (f"<b>the code z</b>: {self.num_variables} variables of "
                          f"{self.num_classes} classes, pick each one's class")
            self._strip_select = w.Dropdown(
                options=[(z_name(l), l) for l in range(self.num_variables)],
                description="classes of", style={"description_width": "70px"},
                layout=w.Layout(width="170px"))
            self._strip_select.observe(
                self._from_user(lambda change: self.set_variable(change["new"])), names="value")
            strip_controls.append(self._strip_select)
        return w.VBox([
            header("Code explorer", f"{self._shape_text()} · prior "
                                    f"{type(self.model.gen_model.prior_net).__name__} · "
                                    f"change the code and watch the decoder"),
            top, _section(code_title), code_box,
            self._strip_caption, w.HBox(strip_controls), self._strip_image])

    def _bit_toggles(self, w) -> list:
        toggles = []
        for k in range(self.K):
            toggle = w.ToggleButton(value=False, description=str(k), tooltip=z_name(k),
                                    layout=w.Layout(width="34px", height="26px", padding="0"))
            toggle.add_class(f"dpm-bit{k}")
            toggle.observe(self._from_user(lambda change, k=k: self.flip(k)), names="value")
            toggles.append(toggle)
        return toggles

    def _class_dropdowns(self, w) -> list:
        dropdowns = []
        for l in range(self.num_variables):
            dropdown = w.Dropdown(options=[(str(c), c) for c in range(self.num_classes)],
                                  description=z_name(l), style={"description_width": "28px"},
                                  layout=w.Layout(width="110px"))
            dropdown.add_class(f"dpm-var{l}")
            dropdown.observe(self._from_user(lambda change, l=l: self.set_class(l, change["new"])),
                             names="value")
            dropdowns.append(dropdown)
        return dropdowns

    def _sync(self) -> None:
        with self._mirroring(), self._widget.hold_sync():
            self._decoded.value = self._png
            self._mode_buttons.value = self._mode
            self._resample.disabled = self._mode != "sample"
            for unit, value in zip(self._units, self.classes.tolist()):
                if self._kind == "binary":
                    value, style = bool(value), "info" if value else ""
                    if unit.button_style != style:
                        unit.button_style = style
                if unit.value != value:
                    unit.value = value
            if self.codes is not None:
                i = self._origin[2] if self._origin is not None else None
                if i is not None:
                    self._index.value = i
                    self._original.value = self._thumbnail_png(i)
                    self._original_caption.value = (f"<div style='color:#444'>x: test image "
                                                    f"{self._label_text(i)}</div>")
                self._original_box.layout.display = "" if i is not None else "none"
            if self._kind == "binary" and self.num_pages > 1:
                self._strip_select.value = self._page
            elif self._kind == "categorical":
                self._strip_select.value = self._variable
            self._strip_caption.value = _section_html(self._strip_title())
            strip = self.strip_pixels()
            # shown pixel for pixel: the labels are drawn at their size
            self._strip_image.layout.width = f"{strip.shape[1]}px"
            self._strip_image.layout.height = f"{strip.shape[0]}px"
            self._strip_image.value = png_bytes(strip)
            self._info.value = ("<div style='color:#333;max-width:520px;line-height:1.5'>"
                                f"{self.info_text()}</div>")

    def static_figure(self) -> Figure:
        """The decoded image, the code, and the strip of single changes (drawn pixel for pixel)."""
        strip = self.strip_pixels()
        top_h, title_h = 3.0, 0.35  # inches
        strip_h = strip.shape[0] / STATIC_DPI
        fig = Figure(figsize=(11.0, top_h + title_h + strip_h + 0.1), dpi=STATIC_DPI,
                     layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, title_h + strip_h])
        ax_x, ax_z = top.subplots(1, 2, width_ratios=[1, 2.6])
        ax_x.imshow(to_uint8(self._image), cmap="gray", vmin=0, vmax=255,
                    interpolation="nearest")
        ax_x.set_axis_off()
        ax_x.set_title("decoder mean E[x|z]" if self._mode == "mean" else "a draw x ~ p(x|z)")
        if self._kind == "binary":
            columns = min(20, self.K)
            rows = math.ceil(self.K / columns)
            cells = torch.full((rows * columns,), float("nan"))
            cells[: self.K] = self._z
            ax_z.imshow(cells.view(rows, columns).numpy(), cmap="Blues", vmin=-0.3, vmax=1.0)
            ax_z.set_xticks(range(columns))
            ax_z.set_yticks(range(rows), [str(r * columns) for r in range(rows)])
            ax_z.set_title(f"the code z: {self.K} bits (dark = 1); bit = row + column")
        else:
            ax_z.imshow(self._z.view(self.num_variables, self.num_classes).T.numpy(), cmap="Blues",
                        vmin=-0.3, vmax=1.0)
            ax_z.set_xticks(range(self.num_variables))
            ax_z.set_yticks(range(self.num_classes))
            ax_z.set_xlabel("variable l")
            ax_z.set_ylabel("class c")
            ax_z.set_title(f"the code z: the class (dark) of each of {self.num_variables} "
                           f"variables")
        ax_z.tick_params(labelsize=8, length=0)
        # white lines between the cells, so that neighbouring equal bits read apart
        rows, columns = ax_z.get_images()[0].get_array().shape
        ax_z.set_xticks(np.arange(columns + 1) - 0.5, minor=True)
        ax_z.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
        ax_z.tick_params(which="minor", length=0)
        ax_z.grid(which="minor", color="white", lw=1.5)
        bottom.suptitle(self._strip_title(), fontsize=10, va="top", y=1.0)
        # the strip, pixel for pixel (its labels are drawn at their size), centred
        x_offset = max(0, (fig.bbox.width - strip.shape[1]) // 2)
        fig.figimage(strip, xo=x_offset, yo=4, origin="upper")
        fig.suptitle(f"Code explorer (static view; {self._shape_text()})")
        return fig

    def __repr__(self) -> str:
        n = 0 if self.codes is None else self.codes.shape[0]
        return (f"{type(self).__name__}({self._kind}, {self._shape_text()}, "
                f"images={list(self.image_shape)}, test images={n})")


def _section_html(text: str) -> str:
    return f"<div style='color:#333;margin:6px 0 2px 0;line-height:1.4'>{text}</div>"


def _section(text: str):
    """A left-aligned line of text over a part of the widget."""
    return ipywidgets().HTML(_section_html(text))
