"""Train the reference VAE on FashionMNIST for a fixed time budget and report its figures.

The reference model is the classic VAE of the course: N(0, I) prior,
diagonal Gaussian q(z|x), Bernoulli p(x|z), feed-forward encoder and decoder,
28x28 FashionMNIST binarised at 0.5. It prints the test ELBO and the
importance-sampled log-likelihood, and writes a PNG of prior samples and test
reconstructions.

Run it with ``python -m dpm_core.reference`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Optional

import torch

from .conditionals import BinarizedImageModel, GaussianCPDNet
from .data import load_data
from .inference import InferenceModel
from .joint import JointDistribution
from .networks import build_ffnn_decoder, build_ffnn_encoder
from .nvil import NVIL
from .priors import GaussianPriorNet
from .training import OptCollection, assess, default_device, seed_all, train_vae

__all__ = ["build_reference_vae", "main"]


def build_reference_vae(latent_size: int = 32, hidden_size: int = 512, width: int = 28,
                        height: int = 28) -> NVIL:
    """The reference VAE: N(0, I) prior, Gaussian q(z|x), Bernoulli p(x|z), FFNN networks.

    Args:
        latent_size: K.
        hidden_size: H of the decoder's and encoder's hidden layers.
        width: image width.
        height: image height.
    """
    decoder = functools.partial(build_ffnn_decoder, hidden_size=hidden_size)
    encoder = functools.partial(build_ffnn_encoder)
    return NVIL(
        JointDistribution(
            GaussianPriorNet(latent_size),
            BinarizedImageModel(1, width, height, latent_size, decoder_type=decoder),
        ),
        InferenceModel(GaussianCPDNet, latent_size, num_channels=1, width=width, height=height,
                       hidden_size=2 * hidden_size, encoder_type=encoder),
    )


def main(argv: Optional[list] = None) -> dict:
    """Train, evaluate and plot; returns the figures it printed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time budget")
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--is-samples", type=int, default=1000,
                        help="importance samples per test image for log p(x)")
    parser.add_argument("--is-images", type=int, default=1000,
                        help="test images for the importance-sampled log p(x)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the PNG")
    parser.add_argument("--data", type=Path, default=None, help="folder with the IDX files")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    seed_all(args.seed)
    device = torch.device(args.device) if args.device else default_device()
    data = load_data("fashion-mnist", root=args.data, binarize="static", device=device)
    print(f"data: train {len(data.train)}, dev {len(data.dev)}, test {len(data.test)} images "
          f"of shape {data.train.image_shape}; device {device}; {torch.get_num_threads()} threads")

    model = build_reference_vae(args.latent_size, args.hidden_size).to(device)
    opts = OptCollection(torch.optim.Adam(model.gen_params(), lr=args.lr),
                         torch.optim.Adam(model.inf_params(), lr=args.lr))
    log = train_vae(model, opts, data.train, data.dev, batch_size=args.batch_size,
                    num_epochs=1000, check_every=200, sample_size_eval=1, device=device,
                    time_budget=args.seconds, progress=not args.no_progress,
                    generator=torch.Generator(device=device).manual_seed(args.seed))
    steps = len(log["training.loss"])
    print(f"trained {steps} steps ({steps * args.batch_size / len(data.train):.1f} epochs) "
          f"in {log['time']:.1f} s")

    start = time.perf_counter()
    test = assess(model, 1, data.test, device=device)
    subset = data.test.subset(torch.arange(min(args.is_images, len(data.test))))
    with torch.no_grad():
        is_fig = assess(model, args.is_samples, subset, device=device, batch_size=50)
    eval_time = time.perf_counter() - start
    print(f"test ELBO  {test['ELBO']:8.2f} nats  (D {test['D']:.2f}, R {test['R']:.2f}; "
          f"all {len(data.test)} test images, 1 sample)")
    print(f"test log p(x) >= {is_fig['L']:8.2f} nats  (importance sampling, {args.is_samples} "
          f"samples, first {len(subset)} test images; their ELBO {is_fig['ELBO']:.2f})")
    print(f"evaluation took {eval_time:.1f} s")

    from .plotting import save_samples_and_reconstructions

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "reference_vae.png"
    save_samples_and_reconstructions(model, data.test.batches(16).__next__()[0], png)
    print(f"wrote {png}")
    return {"test_elbo": test["ELBO"], "test_is_ll": is_fig["L"], "steps": steps,
            "train_seconds": log["time"], "png": str(png)}


if __name__ == "__main__":
    main()
