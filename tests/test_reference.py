"""The reference job: its helpers, its budget (steps with a time cap, or seconds), and a short
end-to-end run on the real data when present.

The runs of ``main`` without the real data read toy IDX files written here (``toy_data``):
1100 training and 50 test images of 28x28 random intensities, seeded, so that the job's
1000 dev images leave 100 to train on.
"""

import struct
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from dpm_core import reference  # noqa: E402
from dpm_core.data import IDX_FILES  # noqa: E402
from dpm_core.reference import (build_reference_vae, init_decoder_bias, step_cosine,  # noqa: E402
                                step_warmup, time_cosine, time_warmup)

REAL_DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
#: a quick evaluation for the runs of main: importance sampling on 10 images, 10 samples each
QUICK = ["--is-images", "10", "--is-samples", "10", "--no-progress", "--device", "cpu"]


def _idx(array: torch.Tensor) -> bytes:
    """The IDX encoding of a uint8 tensor: magic, big-endian dims, payload."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim())
    return header + struct.pack(f">{array.dim()}I", *array.shape) + array.numpy().tobytes()


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    """A folder with the four FashionMNIST IDX files holding 1100 + 50 random images."""
    folder = tmp_path_factory.mktemp("toy-fashion-mnist")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 1100), ("test", 50)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=gen)
        (folder / IDX_FILES[f"{split}_images"]).write_bytes(_idx(images))
        (folder / IDX_FILES[f"{split}_labels"]).write_bytes(_idx(labels))
    return folder


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


def test_step_cosine_follows_the_cosine_of_the_step_share():
    """Is the step schedule floor + (1 - floor) (1 + cos(pi * step / steps)) / 2 at every step,
    from 1 at step 0 to the floor at the last step, and the floor after it?"""
    factor = step_cosine(steps=40, floor=0.1)
    share = torch.arange(61, dtype=torch.float64).div(40).clamp(max=1)
    expected = 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.pi * share))
    torch.testing.assert_close(torch.tensor([factor(k) for k in range(61)], dtype=torch.float64),
                               expected)
    assert factor(0) == pytest.approx(1.0) and factor(20) == pytest.approx(0.55)
    assert factor(40) == pytest.approx(0.1) and factor(60) == pytest.approx(0.1)


def test_step_warmup_rises_linearly_from_zero_to_one():
    """Does the warm-up give beta 0 at step 0, 0.25 a quarter of the way in, 1 from its end on?"""
    beta = step_warmup(8)
    assert [beta(k) for k in (0, 2, 4, 8, 30)] == [0.0, 0.25, 0.5, 1.0, 1.0]


def test_step_schedules_ignore_the_clock(monkeypatch):
    """Do the step schedules give the same values however much time passes between the steps
    (so that a busy machine trains the same model as an idle one)?"""
    now = [0.0]
    monkeypatch.setattr(reference.time, "perf_counter", lambda: now[0])
    factor, beta = step_cosine(100), step_warmup(50)
    before = [(factor(k), beta(k)) for k in (0, 25, 50, 100)]
    now[0] = 1e6
    assert [(factor(k), beta(k)) for k in (0, 25, 50, 100)] == before


def test_step_warmup_of_zero_steps_is_the_elbo_and_bad_budgets_are_refused():
    """Is a warm-up of 0 steps beta = 1 from the first step, and a negative or fractional
    number of steps refused with a message naming the schedule?"""
    assert step_warmup(0)(0) == 1.0
    for steps in (-1, 2.5):
        with pytest.raises(ValueError, match="warm-up must be an int >= 0 steps"):
            step_warmup(steps)
        with pytest.raises(ValueError, match="cosine budget must be an int >= 0 steps"):
            step_cosine(steps)


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


@pytest.mark.parametrize("argv, message", [
    (["--warmup", "1.5"], "--warmup is a share of the budget in [0, 1], got 1.5"),
    (["--steps", "0"], "--steps must be a positive number of steps, got 0"),
    (["--seconds", "0"], "--seconds must be a positive number of seconds, got 0.0"),
    (["--max-seconds", "-5"], "--max-seconds must be a positive number of seconds, got -5.0"),
    (["--seconds", "30", "--max-seconds", "60"],
     "--max-seconds caps a --steps budget; --seconds is already a time budget"),
    (["--seconds", "30", "--steps", "100"],
     "argument --steps: not allowed with argument --seconds"),
])
def test_main_refuses_a_bad_budget_before_any_work(argv, message, capsys):
    """Does a bad budget or warm-up stop the job before any work, with a message naming the
    option?"""
    with pytest.raises(SystemExit) as stop:
        reference.main(argv + ["--no-progress", "--data", "/nonexistent"])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("target, verdict", [(-1e9, "meets"), (0.0, "misses")])
def test_main_trains_the_whole_step_budget_and_says_whether_it_met_the_target(
        target, verdict, toy_data, tmp_path, monkeypatch, capsys):
    """Does a budget of 20 steps under a generous cap train exactly 20 steps, print the steps,
    seconds, steps per second and load, and say whether the test ELBO meets the target?"""
    monkeypatch.setattr(reference, "TARGET_ELBO", target)
    figures = reference.main(["--steps", "20", "--max-seconds", "600",
                              "--data", str(toy_data), "--out", str(tmp_path)] + QUICK)
    out = capsys.readouterr().out
    assert figures["steps"] == figures["budget_steps"] == 20 and not figures["capped"]
    assert figures["meets_target"] is (verdict == "meets")
    assert "trained 20 of 20 steps" in out and "steps/s; load average" in out
    assert "stopped training" not in out
    assert (f"{verdict} the target of {target:.0f} after the full budget of 20 steps ("
            in out.splitlines()[-1])


def test_main_stops_at_the_cap_and_says_so(toy_data, tmp_path, capsys):
    """With a cap of 0.5 s on a budget of a million steps, does training stop short of the
    budget, and do the printout and the verdict say that the cap cut it short?"""
    figures = reference.main(["--steps", "1000000", "--max-seconds", "0.5",
                              "--data", str(toy_data), "--out", str(tmp_path)] + QUICK)
    out = capsys.readouterr().out
    assert figures["capped"] and figures["steps"] < figures["budget_steps"] == 1_000_000
    assert (f"the cap of 0.5 s (--max-seconds) stopped training after {figures['steps']} of "
            f"the 1000000 steps" in out)
    assert "not of the reference model" in out
    assert (f"with training cut short by the 0.5 s cap after {figures['steps']} of 1000000 steps"
            in out.splitlines()[-1])


def test_main_with_seconds_is_a_time_budget(toy_data, tmp_path, capsys):
    """Does --seconds 0.5 train for a time budget (no step budget, no cap message) and say so?"""
    figures = reference.main(["--seconds", "0.5", "--data", str(toy_data),
                              "--out", str(tmp_path)] + QUICK)
    out = capsys.readouterr().out
    assert figures["budget_steps"] is None and not figures["capped"]
    assert 0.5 <= figures["train_seconds"] < 5
    assert "(a time budget of 0.5 s" in out and "stopped training" not in out
    assert f"after {figures['steps']} steps in a time budget of 0.5 s" in out.splitlines()[-1]


@pytest.mark.skipif(not REAL_DATA.exists(), reason="FashionMNIST not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_main_trains_evaluates_and_writes_the_png(tmp_path, capsys):
    """Does a 50-step run of the main job on FashionMNIST print finite figures and write a
    readable PNG?"""
    figures = reference.main(["--steps", "50", "--out", str(tmp_path), "--is-images", "20",
                              "--is-samples", "20", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "test ELBO" in out and "importance sampling" in out
    assert figures["steps"] == 50
    assert -800 < figures["test_elbo"] < 0
    assert figures["test_is_ll"] < 0
    image = matplotlib.pyplot.imread(figures["png"])
    assert image.ndim == 3 and image.shape[0] > 100
