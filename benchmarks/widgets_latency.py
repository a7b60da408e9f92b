"""How long one update of the latent widgets takes on the CPU, for the course's decoders.

An update is what happens in the kernel when a student moves a slider or clicks on
the pad: decode z (under ``torch.no_grad()``, on the model's device), encode the image
as PNG, and mirror the state in the widgets, the pad included: its markers are
redrawn over the saved background and ipympl encodes the changed pixels as PNG
(``state + widgets``). ``state only`` is the decoding and the PNG alone. A full
redraw of the pad (``pad full redraw``: matplotlib's Agg draw of all the points and
ipympl's PNG) happens only when the browser first shows it or resizes it. The course
promises under 100 ms per update on a 2-core CPU. The figures depend on what else
the machine is doing: the header prints its load average.

Decoders timed (weights are random: the time does not depend on training):

* the reference FFNN decoder (two hidden layers of 256) for 28x28 images, K = 2 and 16;
* the CNN decoder (``build_cnn_decoder``, hidden 1024) for 64x64 images, K = 2 and 16.

The code explorer (``--codes``, on by default) is timed on the FFNN decoder for 28x28
images with a discrete code: K = 200 bits (a flip, which decodes the code and its 40
one-bit flips of the strip's page in one batch) and L = 20 variables of C = 10 classes
(a change of class, which decodes the code and the 10 classes of the strip's variable).

Run it with ``python benchmarks/widgets_latency.py`` (``--help`` for options). It
prints the median and the 90th percentile in milliseconds per update.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpm_core.conditionals import BinarizedImageModel, GaussianCPDNet  # noqa: E402
from dpm_core.discrete import (BernoulliCPDNet, BernoulliPriorNet, OneHotCPDNet,  # noqa: E402
                               OneHotPriorNet)
from dpm_core.inference import InferenceModel  # noqa: E402
from dpm_core.joint import JointDistribution  # noqa: E402
from dpm_core.networks import build_cnn_decoder, build_cnn_encoder  # noqa: E402
from dpm_core.nvil import NVIL  # noqa: E402
from dpm_core.priors import GaussianPriorNet  # noqa: E402
from dpm_core.reference import build_reference_vae  # noqa: E402
from dpm_core.widgets import CodeExplorer, Interpolator, LatentExplorer, PosteriorView  # noqa: E402


def build_cnn_vae(latent_size: int, size: int = 64) -> NVIL:
    """An NVIL with the CNN decoder and encoder of the notebooks, for size x size grey images."""
    return NVIL(
        JointDistribution(
            GaussianPriorNet(latent_size),
            BinarizedImageModel(1, size, size, latent_size, decoder_type=build_cnn_decoder)),
        InferenceModel(GaussianCPDNet, latent_size, num_channels=1, width=size, height=size,
                       hidden_size=1024, encoder_type=build_cnn_encoder))


def build_code_model(kind: str, K: int, num_classes: int = 10, size: int = 28) -> NVIL:
    """An NVIL with the reference FFNN decoder and a binary or categorical code of size K."""
    if kind == "binary":
        prior, q_type = BernoulliPriorNet(K), BernoulliCPDNet
    else:
        prior = OneHotPriorNet(K, num_classes=num_classes)
        q_type = functools.partial(OneHotCPDNet, num_classes=num_classes)
    return NVIL(JointDistribution(prior, BinarizedImageModel(1, size, size, K)),
                InferenceModel(q_type, K, num_channels=1, width=size, height=size,
                               hidden_size=256))


def milliseconds(fn: Callable[[int], None], repeats: int, warmup: int = 5) -> tuple[float, float]:
    """Median and 90th percentile of ``fn(i)`` in ms over ``repeats`` calls, after a warm-up."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def shown(view):
    """Build the view's widgets and draw its pad once, as the browser's first request does."""
    view.widget
    pad_redraw(view)(0)
    return view


def pad_redraw(view) -> Callable[[int], None]:
    """What the kernel does when the browser asks for a full drawing of the pad."""
    canvas = view._pad.figure.canvas

    def redraw(_: int) -> None:
        canvas.draw()
        if hasattr(canvas, "get_diff_image"):  # ipympl: the PNG sent to the browser
            canvas._force_full = True
            canvas.get_diff_image()
    return redraw


def bench_model(name: str, model: NVIL, size: int, repeats: int, num_points: int) -> list[tuple]:
    """Rows ``(model, action, median ms, p90 ms)`` for one model."""
    x = torch.rand(num_points, 1, size, size).round()
    labels = torch.arange(num_points) % 10
    K = model.gen_model.prior_net.outcome_shape[0]
    grid = torch.linspace(-2.5, 2.5, repeats + 10)
    rows = []

    explorer = LatentExplorer(model, x, labels)
    rows.append((name, "explorer: slider (state only)",
                 *milliseconds(lambda i: explorer.set_coordinate(0, float(grid[i])), repeats)))
    shown(explorer)
    rows.append((name, "explorer: slider (state + widgets)",
                 *milliseconds(lambda i: explorer.set_coordinate(0, float(grid[i])), repeats)))
    rows.append((name, "explorer: pad click (state + widgets)",
                 *milliseconds(lambda i: explorer.pick((grid[i], -grid[i])), repeats)))
    rows.append((name, "explorer: pad full redraw", *milliseconds(pad_redraw(explorer), repeats)))
    explorer.set_mode("sample")
    rows.append((name, "explorer: slider, sample mode",
                 *milliseconds(lambda i: explorer.set_coordinate(K - 1, float(grid[i])), repeats)))

    interpolator = shown(Interpolator(model, x, labels))
    ts = torch.linspace(0, 1, repeats + 10)
    rows.append((name, "interpolator: t slider (state + widgets)",
                 *milliseconds(lambda i: interpolator.set_t(float(ts[i])), repeats)))
    rows.append((name, "interpolator: pad full redraw",
                 *milliseconds(pad_redraw(interpolator), repeats)))

    posterior = shown(PosteriorView(model, x, labels, num_samples=16))
    rows.append((name, "posterior: pick image, 16 draws (state + widgets)",
                 *milliseconds(lambda i: posterior.select(i % num_points), repeats)))
    rows.append((name, "posterior: pad full redraw", *milliseconds(pad_redraw(posterior), repeats)))
    return rows


def bench_codes(repeats: int, num_points: int) -> list[tuple]:
    """Rows for the code explorer: 200 bits, and 20 variables of 10 classes."""
    x = torch.rand(num_points, 1, 28, 28).round()
    rows = []
    for name, kind, K in [("FFNN 28x28, 200 bits", "binary", 200),
                          ("FFNN 28x28, L=20,C=10", "categorical", 200)]:
        view = CodeExplorer(build_code_model(kind, K), x)
        if kind == "binary":
            def change(i: int) -> None:
                view.flip(i % 40)  # on the strip's page: its 40 flips are decoded again
        else:
            def change(i: int) -> None:
                view.set_class(i % 20, i % 10)
        rows.append((name, "codes: one change (state only)", *milliseconds(change, repeats)))
        view.widget
        rows.append((name, "codes: one change (state + widgets)", *milliseconds(change, repeats)))
        rows.append((name, "codes: encode a test image (state + widgets)",
                     *milliseconds(lambda i: view.encode(i % num_points), repeats)))
    return rows


def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the course: 2)")
    parser.add_argument("--repeats", type=int, default=50, help="updates timed per action")
    parser.add_argument("--num-points", type=int, default=2000, help="encoded test images")
    parser.add_argument("--latent-sizes", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--no-continuous", dest="continuous", action="store_false",
                        help="skip the views of continuous codes")
    parser.add_argument("--no-codes", dest="codes", action="store_false",
                        help="skip the code explorer (discrete codes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = []
    for K in args.latent_sizes if args.continuous else []:
        models.append((f"FFNN 28x28, K={K}", build_reference_vae(latent_size=K), 28))
        models.append((f"CNN 64x64, K={K}", build_cnn_vae(K), 64))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"widget update latency on the CPU: {os.cpu_count()} cores (load average {load:.1f}), "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{args.repeats} updates each (ms)")
    print(f"{'model':<22} {'action':<52} {'median':>7} {'p90':>7}")
    rows = []
    benches = [functools.partial(bench_model, name, model, size, args.repeats, args.num_points)
               for name, model, size in models]
    if args.codes:
        benches.append(functools.partial(bench_codes, args.repeats, args.num_points))
    for bench in benches:
        for row in bench():
            print(f"{row[0]:<22} {row[1]:<52} {row[2]:7.1f} {row[3]:7.1f}", flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
