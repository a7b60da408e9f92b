"""Tests for dpm_core/vae.py: the compact first VAE (reparametrise, loss_func, VAE).

Statistical policy (``reparametrise``): seed ``SEED``, ``NUM_DRAWS`` draws per coordinate,
and a tolerance of ``NUM_SE`` standard errors: ``sigma / sqrt(N)`` for the sample mean and
``sigma^2 sqrt(2 / (N - 1))`` for the sample variance (exact for Gaussian draws).
"""

import math

import pytest
import torch
from torch.testing import assert_close

from dpm_core.vae import VAE, loss_func, reparametrise

SEED = 0
NUM_DRAWS = 100_000
NUM_SE = 4.0

MU = [1.0, -2.0, 0.0]
LOGVAR = [0.5, -1.0, 2.0]


def test_reparametrise_has_the_right_mean_and_variance(device):
    """Are draws of reparametrise(mu, logvar) centred at mu with variance exp(logvar) (within NUM_SE standard errors)?"""
    mu = torch.tensor(MU, device=device)
    logvar = torch.tensor(LOGVAR, device=device)
    torch.manual_seed(SEED)
    z = reparametrise(mu.expand(NUM_DRAWS, 3), logvar.expand(NUM_DRAWS, 3))
    assert z.shape == (NUM_DRAWS, 3)
    var = logvar.exp()
    se_mean = var.sqrt() / math.sqrt(NUM_DRAWS)
    se_var = var * math.sqrt(2.0 / (NUM_DRAWS - 1))
    assert ((z.mean(0) - mu).abs() <= NUM_SE * se_mean).all(), (z.mean(0), mu)
    assert ((z.var(0) - var).abs() <= NUM_SE * se_var).all(), (z.var(0), var)


def test_reparametrise_is_differentiable_in_mu_and_logvar(device):
    """Do gradients reach mu and logvar, with dz/dmu = 1 and dz/dlogvar = (z - mu) / 2?"""
    mu = torch.tensor(MU, device=device).repeat(5, 1).requires_grad_()
    logvar = torch.tensor(LOGVAR, device=device).repeat(5, 1).requires_grad_()
    z = reparametrise(mu, logvar)
    assert z.requires_grad
    z.sum().backward()
    assert_close(mu.grad, torch.ones_like(mu))
    # z = mu + eps exp(logvar / 2), so dz/dlogvar = eps exp(logvar / 2) / 2 = (z - mu) / 2
    assert_close(logvar.grad, (z - mu).detach() / 2)


def test_reparametrise_rejects_mismatched_shapes():
    """Are mu and logvar of different shapes rejected with a ValueError?"""
    with pytest.raises(ValueError, match="same shape"):
        reparametrise(torch.zeros(4, 2), torch.zeros(4, 3))


def test_loss_func_is_the_negative_elbo_by_hand(device):
    """Is loss_func the batch mean of (BCE summed over pixels + closed-form KL to N(0, I))?"""
    recon_x = torch.rand(6, 10, device=device).clamp(0.01, 0.99)
    x = torch.randint(0, 2, (6, 10), device=device).float()
    mu, logvar = torch.randn(6, 3, device=device), torch.randn(6, 3, device=device)
    bce = -(x * recon_x.log() + (1 - x) * (1 - recon_x).log()).sum(-1)  # [N]
    kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(-1)  # [N]
    loss = loss_func(recon_x, x, mu, logvar)
    assert loss.shape == ()
    assert_close(loss, (bce + kl).mean())


def test_loss_func_rejects_mismatched_shapes():
    """Are recon_x and x of different shapes rejected with a ValueError?"""
    with pytest.raises(ValueError, match="same shape"):
        loss_func(torch.rand(4, 10), torch.rand(4, 9), torch.zeros(4, 2), torch.zeros(4, 2))


def test_vae_forward_shapes(device):
    """Does VAE map [N, D] images to probabilities [N, D] and mu, logvar [N, K]?"""
    model = VAE(input_dim=20, z_dim=2, hidden_sizes=(16, 8)).to(device)
    recon_x, mu, logvar = model(torch.rand(5, 20, device=device))
    assert recon_x.shape == (5, 20) and mu.shape == (5, 2) and logvar.shape == (5, 2)
    assert ((recon_x > 0) & (recon_x < 1)).all()
    assert recon_x.device.type == device.type


def test_vae_loss_reaches_every_parameter(device):
    """Does backward on loss_func of the VAE's outputs give every parameter a gradient?"""
    model = VAE(input_dim=20, z_dim=2, hidden_sizes=(16, 8)).to(device)
    x = torch.randint(0, 2, (5, 20), device=device).float()
    recon_x, mu, logvar = model(x)
    loss_func(recon_x, x, mu, logvar).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name


@pytest.mark.parametrize("argument", ["input_dim", "z_dim"])
def test_vae_rejects_bad_sizes(argument):
    """Is a size that is not a positive int rejected with a ValueError naming it?"""
    with pytest.raises(ValueError, match=argument):
        VAE(**{argument: 0})


def test_latent_model_view_is_the_vae(device):
    """Does the NVIL-shaped view give q(z|x) = N(mu, exp(logvar)) and p(x|z) = Bernoulli(decoder(z))
    of the VAE itself, on images [3, 5, 1, 4, 5], with the loss_func's value as -log p(x|z) + KL?"""
    model = VAE(input_dim=20, z_dim=3, hidden_sizes=(16,)).to(device)
    view = model.as_latent_model(image_shape=(1, 4, 5))
    x = torch.randint(0, 2, (3, 5, 1, 4, 5), device=device).float()
    qz = view.inf_model(x)
    h = model.encoder(x.flatten(-3))
    mu, logvar = model.mu(h), model.logvar(h)
    assert qz.batch_shape == (3, 5) and qz.event_shape == (3,)
    assert_close(qz.mean, mu)
    assert_close(qz.variance, logvar.exp())
    z = qz.sample()
    px_z = view.gen_model.obs_model(z)
    assert px_z.batch_shape == (3, 5) and px_z.event_shape == (1, 4, 5)
    assert_close(px_z.mean, model.decoder(z).reshape(3, 5, 1, 4, 5))
    pz = view.gen_model.prior((3, 5))
    kl = torch.distributions.kl_divergence(qz, pz)
    recon = model.decoder(z).reshape(15, 20)
    by_hand = loss_func(recon, x.reshape(15, 20), mu.reshape(15, 3), logvar.reshape(15, 3))
    assert_close((-px_z.log_prob(x) + kl).mean(), by_hand, rtol=1e-4, atol=1e-4)


def test_latent_model_view_shares_the_layers():
    """Does a change of the VAE's weights show in the view, and does view.to move the prior too?"""
    model = VAE(input_dim=20, z_dim=2, hidden_sizes=(8,))
    view = model.as_latent_model((1, 4, 5))
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}
    z = torch.zeros(1, 2)
    with torch.no_grad():
        model.decoder[-2].bias.fill_(3.0)
    assert_close(view.gen_model.obs_model(z).mean.flatten(), model.decoder(z).flatten())
    assert view.gen_model.prior(()).mean.device == next(model.parameters()).device


def test_latent_model_view_rejects_a_wrong_image_shape():
    """Is an image shape with a different number of pixels a ValueError naming both sizes?"""
    model = VAE(input_dim=20, z_dim=2, hidden_sizes=(8,))
    with pytest.raises(ValueError, match=r"holds 784 pixels, but the VAE takes 20"):
        model.as_latent_model()
    with pytest.raises(ValueError, match="batch_shape"):
        model.as_latent_model((1, 4, 5)).inf_model(torch.zeros(2, 20))
