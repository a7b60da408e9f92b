"""Tests for dpm_core/training.py: seeding, devices, optimiser collections, assess and train_vae.

The models are the reference VAE of :mod:`dpm_core.reference` at toy size (K = 2, hidden
size 16) on 8x8 binary images held in an :class:`ImageData`: either random pixels, or
noisy copies of two prototype images (a data set a VAE learns in a few hundred steps).

Statistical policy (``assess``'s L against its ELBO): seed ``SEED``, ``IS_SAMPLES``
importance samples per image, averaged over ``len(dev)`` images, with a tolerance of
``L_TOLERANCE`` nats for the Monte Carlo error of the sampled rate inside L.
"""

import random

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from dpm_core import training
from toy_images import prototype_images, random_images
from dpm_core.reference import build_reference_vae
from dpm_core.training import OptCollection, assess, default_device, seed_all, train_vae

SEED = 0
IS_SAMPLES = 200
L_TOLERANCE = 0.1
SIZE = 8
LOG_KEYS = {"training.loss", "training.ELBO", "training.D", "training.R", "training.cv_loss",
            "dev.ELBO", "dev.D", "dev.R", "dev.L", "time", "threads"}


def toy_vae():
    return build_reference_vae(latent_size=2, hidden_size=16, width=SIZE, height=SIZE)


def adam(model, lr=1e-2):
    return OptCollection(torch.optim.Adam(model.gen_params(), lr=lr),
                         torch.optim.Adam(model.inf_params(), lr=lr))


# ----------------------------------------------------------------------------- seeding, devices


def draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_seed_all_makes_every_generator_reproducible():
    """Does seed_all(s) reset Python's, NumPy's and torch's generators, and do other seeds give other draws?"""
    seed_all(123)
    first = draws()
    seed_all(123)
    assert draws() == first
    seed_all(124)
    other = draws()
    for a, b in zip(first, other):
        assert a != b


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_seed_all_seeds_cuda():
    """Does seed_all(s) also make CUDA draws reproducible?"""
    seed_all(5)
    first = torch.rand(3, device="cuda")
    seed_all(5)
    assert_close(torch.rand(3, device="cuda"), first)


def test_default_device_is_the_fastest_available():
    """Is default_device() cuda when CUDA is available, else mps when available, else cpu?"""
    if torch.cuda.is_available():
        expected = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert default_device().type == expected


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_default_device_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    """With availability faked, does default_device() choose cuda over mps over cpu?"""
    monkeypatch.setattr(training.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(training.torch.backends.mps, "is_available", lambda: mps)
    assert default_device().type == expected


# ----------------------------------------------------------------------------- OptCollection


@pytest.mark.parametrize("num_opts", [2, 3])
def test_opt_collection_steps_and_zeroes_every_optimiser(num_opts):
    """Do step() move the parameters of all optimisers and zero_grad() clear all their gradients?"""
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(num_opts)]
    opts = OptCollection(*[torch.optim.SGD([p], lr=0.5) for p in params])
    sum((i + 1) * p.sum() for i, p in enumerate(params)).backward()
    opts.step()
    for i, p in enumerate(params):
        assert_close(p.detach(), torch.full((2,), 1.0 - 0.5 * (i + 1)))
    opts.zero_grad()
    assert all(p.grad is None for p in params)


# ----------------------------------------------------------------------------- assess


def test_assess_reports_finite_figures_with_elbo_minus_d_minus_r(device):
    """Does assess return finite ELBO, D, R, L with ELBO = -D - R, D > 0 and R >= 0?"""
    model = toy_vae().to(device)
    figures = assess(model, 3, random_images(20).to(device), batch_size=8)
    assert set(figures) == {"ELBO", "D", "R", "L"}
    assert all(np.isfinite(v) for v in figures.values())
    assert_close(figures["ELBO"], -figures["D"] - figures["R"])
    assert figures["D"] > 0 and figures["R"] >= 0


def test_assess_importance_sampled_l_is_above_the_elbo(device):
    """With a Gaussian q and IS_SAMPLES draws, is the average L at least the average ELBO (up to L_TOLERANCE)?"""
    model = toy_vae().to(device)
    torch.manual_seed(SEED)
    figures = assess(model, IS_SAMPLES, prototype_images(16).to(device))
    assert figures["L"] >= figures["ELBO"] - L_TOLERANCE, figures


def test_assess_restores_the_training_mode():
    """Does assess leave a model in training mode in training mode (and one in eval mode in eval mode)?"""
    model = toy_vae()
    assess(model, 1, random_images(4))
    assert model.training
    model.eval()
    assess(model, 1, random_images(4))
    assert not model.training


def test_assess_rejects_an_empty_data_set():
    """Is assessing on no data at all a ValueError, not a division by zero?"""
    with pytest.raises(ValueError, match="at least one"):
        assess(toy_vae(), 1, random_images(4).subset([]))


# ----------------------------------------------------------------------------- train_vae


def test_train_vae_log_and_step_counts(device):
    """With max_steps=20 and check_every=10, does train_vae log every documented key, 20 steps and checks at 0, 10, 20?"""
    model = toy_vae()
    log = train_vae(model, adam(model), random_images(256), random_images(32), batch_size=64,
                    num_epochs=10, check_every=10, sample_size_eval=2, device=device,
                    max_steps=20, progress=False)
    assert set(log) == LOG_KEYS
    assert [step for step, _ in log["training.loss"]] == list(range(1, 21))
    for key in LOG_KEYS - {"time", "threads"}:
        assert all(np.isfinite(value) for _, value in log[key]), key
    for key in ("dev.ELBO", "dev.D", "dev.R", "dev.L"):
        assert [step for step, _ in log[key]] == [0, 10, 20], key
    assert log["time"] >= 0
    assert next(model.parameters()).device.type == device.type


def test_train_vae_logs_the_figures_of_every_step(device):
    """Are the logged training figures exactly what the model returned at each step, in order,
    also across the periodic copies to the host (120 steps, copies every 50 steps and at the end)?"""
    model = toy_vae()
    returned = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        returned.append({k: float(torch.as_tensor(v).detach()) for k, v in out.items()})
        return out

    model.forward = recording_forward
    log = train_vae(model, adam(model), random_images(256), random_images(8), batch_size=16,
                    num_epochs=100, check_every=1000, sample_size_eval=1, device=device,
                    max_steps=120, progress=False)
    assert len(returned) == 120
    for metric in ("loss", "ELBO", "D", "R", "cv_loss"):
        assert log[f"training.{metric}"] == [(step + 1, pytest.approx(out[metric], rel=1e-6))
                                             for step, out in enumerate(returned)], metric


def test_train_vae_checks_the_dev_set_after_the_last_step():
    """When the last step is not a multiple of check_every, is the dev set assessed once more at the end?"""
    model = toy_vae()
    log = train_vae(model, adam(model), random_images(256), random_images(16), batch_size=64,
                    check_every=10, sample_size_eval=1, device="cpu", max_steps=25,
                    progress=False)
    assert [step for step, _ in log["dev.ELBO"]] == [0, 10, 20, 25]


def test_train_vae_stops_at_the_end_of_the_epochs():
    """Without max_steps, does train_vae take num_epochs * ceil(N / batch_size) steps?"""
    model = toy_vae()
    log = train_vae(model, adam(model), random_images(100), random_images(8), batch_size=32,
                    num_epochs=2, check_every=100, sample_size_eval=1, device="cpu",
                    progress=False)
    assert log["training.loss"][-1][0] == 2 * 4
    assert [step for step, _ in log["dev.ELBO"]] == [0, 8]


def test_train_vae_without_time_takes_no_step():
    """With time_budget=0, does train_vae stop before any training step, leaving the parameters as they were?"""
    model = toy_vae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = train_vae(model, adam(model), random_images(64), random_images(8), batch_size=16,
                    sample_size_eval=1, device="cpu", time_budget=0, progress=False)
    assert log.get("training.loss", []) == []
    assert [step for step, _ in log["dev.ELBO"]] == [0]
    for k, v in model.state_dict().items():
        assert_close(v, before[k])


def test_train_vae_log_has_every_key_even_without_steps():
    """When no step is taken (time_budget=0), does the log still hold every documented key (empty training lists)?"""
    model = toy_vae()
    log = train_vae(model, adam(model), random_images(64), random_images(8), batch_size=16,
                    sample_size_eval=1, device="cpu", time_budget=0, progress=False)
    assert set(log) == LOG_KEYS
    assert all(log[key] == [] for key in LOG_KEYS if key.startswith("training."))


def test_train_vae_improves_the_dev_elbo(device):
    """On noisy copies of two prototypes, is the dev ELBO after 200 steps higher than at step 0?"""
    model = toy_vae()
    log = train_vae(model, adam(model), prototype_images(256), prototype_images(64),
                    batch_size=32, num_epochs=100, check_every=200, sample_size_eval=4,
                    device=device, max_steps=200, progress=False)
    (step0, elbo0), (step200, elbo200) = log["dev.ELBO"]
    assert (step0, step200) == (0, 200)
    # 64 pixels start near log 2 nats each (44 nats); the prototypes cost far less
    assert elbo200 > elbo0 + 10, log["dev.ELBO"]


def test_train_vae_leaves_the_model_in_eval_mode():
    """After training on the cpu, is the model (and every submodule) in eval mode?"""
    model = toy_vae()
    train_vae(model, adam(model), random_images(64), random_images(8), batch_size=32,
              sample_size_eval=1, device="cpu", max_steps=2, progress=False)
    assert not any(m.training for m in model.modules())


def test_train_vae_takes_the_rate_weight_of_each_step_from_a_function():
    """With rate_weight a function, is it called with the steps done (0, 1, ...) and is each
    step's beta the one the model gets, while the logged ELBO stays -D - R (beta = 1)?"""
    model = toy_vae()
    asked, given = [], []
    forward = model.forward

    def recording_forward(*args, rate_weight=1.0, **kwargs):
        given.append(rate_weight)
        out = forward(*args, rate_weight=rate_weight, **kwargs)
        assert_close(out["ELBO"], -out["D"] - out["R"])
        return out

    def beta(step):
        asked.append(step)
        return step / 10

    model.forward = recording_forward
    train_vae(model, adam(model), random_images(64), random_images(8), batch_size=16,
              num_epochs=100, check_every=1000, sample_size_eval=1, device="cpu",
              max_steps=6, rate_weight=beta, progress=False)
    assert asked == list(range(6))
    assert given == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_train_vae_with_a_constant_function_trains_as_with_the_constant():
    """Does rate_weight=lambda step: 0.3 give the same parameters as rate_weight=0.3 (same seed)?"""
    trained = []
    for rate_weight in (0.3, lambda step: 0.3):
        seed_all(SEED)
        model = toy_vae()
        train_vae(model, adam(model), prototype_images(64), prototype_images(8), batch_size=16,
                  num_epochs=100, check_every=1000, sample_size_eval=1, device="cpu",
                  max_steps=10, rate_weight=rate_weight, progress=False,
                  generator=torch.Generator().manual_seed(SEED))
        trained.append(model.state_dict())
    for key, value in trained[0].items():
        assert_close(trained[1][key], value)


def test_train_vae_progress_bar_counts_the_seconds_of_a_time_budget(capsys):
    """With a 1 s budget, does the bar end at 100% of "1/1 s" and show the steps taken?"""
    model = toy_vae()
    log = train_vae(model, adam(model), random_images(64), random_images(8), batch_size=16,
                    num_epochs=10 ** 6, check_every=10 ** 6, sample_size_eval=1, device="cpu",
                    time_budget=1.0, progress=True)
    final = capsys.readouterr().err.split("\r")[-1]
    assert "100%" in final and "1/1 s" in final, final
    assert f"steps={len(log['training.loss'])}" in final, final


def test_train_vae_progress_bar_counts_steps_without_a_time_budget(capsys):
    """Without a time budget, does the bar count steps up to max_steps?"""
    model = toy_vae()
    train_vae(model, adam(model), random_images(64), random_images(8), batch_size=16,
              num_epochs=100, check_every=1000, sample_size_eval=1, device="cpu",
              max_steps=20, progress=True)
    final = capsys.readouterr().err.split("\r")[-1]
    assert "100%" in final and "20/20" in final, final


def test_train_vae_progress_bar_with_a_zero_budget():
    """Does a zero time budget with the bar on end cleanly, without a step?"""
    model = toy_vae()
    log = train_vae(model, adam(model), random_images(64), random_images(8), batch_size=16,
                    sample_size_eval=1, device="cpu", time_budget=0, progress=True)
    assert log["training.loss"] == []


def test_train_vae_thread_policy_and_restores_the_count():
    """threads="auto" probes 1 and 2 threads (logged), a number fixes the count, and the count
    in force before comes back; anything else is refused by name."""
    from dpm_core.threads import cpu_threads

    model = toy_vae()
    with cpu_threads(2):
        log = train_vae(model, adam(model), random_images(256), random_images(32), batch_size=16,
                        num_epochs=10, device="cpu", max_steps=60, progress=False)
        assert torch.get_num_threads() == 2
        assert log["threads"] and set(log["threads"][0][1]) == {1, 2}
        seen = []
        model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
        log = train_vae(model, adam(model), random_images(64), random_images(32), batch_size=16,
                        device="cpu", max_steps=4, progress=False, threads=1)
        assert set(seen) == {1} and log["threads"] == [] and torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads must be 'auto', a positive number or None"):
        train_vae(model, adam(model), random_images(64), random_images(32), threads="many")
