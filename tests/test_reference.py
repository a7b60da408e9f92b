"""The reference job: its helpers, and a short end-to-end run on the real data when present."""

from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from dpm_core import reference  # noqa: E402
from dpm_core.reference import (build_reference_vae, init_decoder_bias, time_cosine,  # noqa: E402
                                time_warmup)

REAL_DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_decoder_bias_starts_at_the_mean_image():
    """After init_decoder_bias, does a decoder with zeroed output weights predict the mean image?"""
    model = build_reference_vae(latent_size=2, hidden_size=8)
    images = torch.rand(50, 1, 28, 28)
    init_decoder_bias(model, images)
    with torch.no_grad():
        model.gen_model.cpd_net.decoder[-2].weight.zero_()
        mean = model.gen_model.obs_model(torch.randn(3, 2)).mean
    torch.testing.assert_close(mean, images.mean(0).clamp(1e-3, 1 - 1e-3).expand(3, 1, 28, 28))


def test_decoder_bias_refuses_intensities_outside_0_1():
    """Are stored uint8 intensities (0 to 255), which would start every pixel near white,
    refused with a message that says what to pass, and the bias left as it was?"""
    model = build_reference_vae(latent_size=2, hidden_size=8)
    before = model.gen_model.cpd_net.decoder[-2].bias.detach().clone()
    stored = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*batches"):
        init_decoder_bias(model, stored)
    torch.testing.assert_close(model.gen_model.cpd_net.decoder[-2].bias, before)


def test_time_cosine_decays_from_one_to_the_floor(monkeypatch):
    """Does the time-based schedule start at 1, pass the midpoint at half time and stay at the floor?"""
    now = [100.0]
    monkeypatch.setattr(reference.time, "perf_counter", lambda: now[0])
    factor = time_cosine(budget=10.0, floor=0.1)
    assert factor(0) == pytest.approx(1.0)
    now[0] = 105.0
    assert factor(1) == pytest.approx(0.1 + 0.9 * 0.5)
    now[0] = 130.0
    assert factor(2) == pytest.approx(0.1)


def test_time_warmup_rises_linearly_from_zero_to_one(monkeypatch):
    """Does the warm-up give beta 0 at the first call, 0.25 a quarter of the way in, and 1 after?"""
    now = [50.0]
    monkeypatch.setattr(reference.time, "perf_counter", lambda: now[0])
    beta = time_warmup(8.0)
    assert beta(0) == 0.0
    now[0] = 52.0
    assert beta(1) == pytest.approx(0.25)
    now[0] = 58.0
    assert beta(2) == pytest.approx(1.0)
    now[0] = 90.0
    assert beta(3) == 1.0


def test_time_warmup_of_zero_seconds_is_the_elbo():
    """Is a warm-up of 0 s beta = 1 from the first step, and a negative one refused?"""
    assert time_warmup(0.0)(0) == 1.0
    with pytest.raises(ValueError, match="warm-up"):
        time_warmup(-1.0)


def test_main_refuses_a_warmup_share_outside_zero_one(capsys):
    """Does --warmup 1.5 stop the job before any work with a message naming the option?"""
    with pytest.raises(SystemExit) as stop:
        reference.main(["--warmup", "1.5", "--no-progress"])
    assert stop.value.code == 2
    assert "--warmup is a share of the budget in [0, 1], got 1.5" in capsys.readouterr().err


@pytest.mark.skipif(not REAL_DATA.exists(), reason="FashionMNIST not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_main_trains_evaluates_and_writes_the_png(tmp_path, capsys):
    """Does a 3-second run of the main job print finite figures and write a readable PNG?"""
    figures = reference.main(["--seconds", "3", "--is-images", "20", "--is-samples", "20",
                              "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "test ELBO" in out and "importance sampling" in out
    assert figures["steps"] > 0
    assert -800 < figures["test_elbo"] < 0
    assert figures["test_is_ll"] < 0
    image = matplotlib.pyplot.imread(figures["png"])
    assert image.ndim == 3 and image.shape[0] > 100
