"""Tests for dpm_core/flows.py: the affine coupling, the flow posterior and its use in NVIL.

References are brute force: ``torch.autograd.functional.jacobian`` for the log-determinants,
a grid integral for the normalisation, the base Gaussian for the untrained flow, and the
sampled rate recomputed from the same draws for NVIL.

Tolerance policy. Every test starts from torch's generator seeded with 0 (``conftest.py``)
and builds its flows with ``SEED``. Exact identities (inverse, log-determinants, change of
variables) run in float64 and are compared with ``assert_close(atol=EXACT, rtol=EXACT)``;
the untrained flow must equal its base to float32 round-off (``assert_close``'s defaults).
The couplings of the flows under test are not left at their identity start: their output
layers are drawn from N(0, ``PERTURB``^2) (:func:`perturbed`), which bends the density
visibly (checked) while keeping its mass inside the integration box. The grid integral's
tolerance ``GRID_TOL`` is justified beside :func:`test_log_prob_integrates_to_one`.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributions as td
from torch import nn
from torch.autograd.functional import jacobian
from torch.testing import assert_close

from dpm_core import AffineCoupling, FlowCPDNet, GaussianCPDNet
from dpm_core.conditionals import BinarizedImageModel
from toy_images import prototype_images, random_images
from dpm_core.flows import CouplingNet, coupling_masks
from dpm_core.inference import InferenceModel
from dpm_core.joint import JointDistribution
from dpm_core.networks import build_ffnn_decoder, build_ffnn_encoder
from dpm_core.nvil import NVIL
from dpm_core.priors import GaussianPriorNet
from dpm_core.training import OptCollection, train_vae

SEED = 0
EXACT = 1e-10
PERTURB = 0.3
H_IN = 5  # features of the toy contexts
B = 4
SIZE = 8  # toy images are SIZE x SIZE
GRID_TOL = 1e-3


def perturbed(module: nn.Module, std: float = PERTURB) -> nn.Module:
    """``module`` with every coupling's output layer drawn from N(0, std^2): not the identity."""
    with torch.no_grad():
        for net in module.modules():
            if isinstance(net, CouplingNet):
                nn.init.normal_(net.out.weight, std=std)
                nn.init.normal_(net.out.bias, std=std)
    return module


def flow_net(K: int, num_layers: int = 4, dtype=torch.float64, coupling=None) -> FlowCPDNet:
    torch.manual_seed(SEED)
    return perturbed(FlowCPDNet(K, num_inputs=H_IN, hidden_size=0, num_layers=num_layers,
                                coupling_size=16, coupling=coupling)).to(dtype)


def contexts(batch: int = B, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, H_IN, dtype=dtype)  # [B, H_IN] features


def coupling(K: int, layer: int, h: torch.Tensor) -> AffineCoupling:
    """One perturbed coupling of layer ``layer``'s mask, conditioned on h, in float64."""
    net = perturbed(CouplingNet(K, 16)).double()
    context = nn.Linear(H_IN, 16).double()
    return AffineCoupling(coupling_masks(K, layer + 1)[layer].double(), net.condition(context(h)))


# ----------------------------------------------------------------------------- the bijection

@pytest.mark.parametrize("K", [1, 2, 3, 6])
@pytest.mark.parametrize("layer", [0, 1])
def test_coupling_inverse_is_exact(K, layer):
    """Are inverse(forward(z)) = z and forward(inverse(y)) = y for draws [S, B, K], B contexts?"""
    h = contexts()
    t = coupling(K, layer, h)
    z = 2 * torch.randn(7, B, K, dtype=torch.float64)  # [S, B, K]
    assert_close(t.inv(t(z)), z, atol=EXACT, rtol=EXACT)
    assert_close(t(t.inv(z)), z, atol=EXACT, rtol=EXACT)
    kept = coupling_masks(K, layer + 1)[layer].bool()
    assert_close(t(z)[..., kept], z[..., kept], atol=0, rtol=0)  # the mask passes through


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("layer", [0, 1])
def test_log_abs_det_jacobian_is_the_brute_force_one(K, layer):
    """Is log_abs_det_jacobian log |det dy/dz| of the autograd Jacobian, for each batch element?"""
    h = contexts()
    t = coupling(K, layer, h)
    z = torch.randn(B, K, dtype=torch.float64)
    J = jacobian(t, z)  # [B, K, B, K]
    blocks = torch.stack([J[b, :, b, :] for b in range(B)])  # [B, K, K]
    assert_close(t.log_abs_det_jacobian(z, t(z)), torch.linalg.slogdet(blocks).logabsdet,
                 atol=EXACT, rtol=EXACT)
    # and without the cached log-scale of the last call
    assert_close(t.log_abs_det_jacobian(z.clone(), t(z).clone()),
                 torch.linalg.slogdet(blocks).logabsdet, atol=EXACT, rtol=EXACT)
    # batch elements do not mix: each is transformed with its own context only
    off = J.clone()
    for b in range(B):
        off[b, :, b, :] = 0
    assert off.abs().max() == 0


def test_coupling_rejects_bad_masks():
    """Does a mask that is not a 0/1 vector raise ValueError naming the mask?"""
    g = CouplingNet(2, 4).condition(torch.zeros(B, 4))
    for mask in (torch.tensor([0.5, 1.0]), torch.ones(2, 2)):
        with pytest.raises(ValueError, match="mask must be a vector"):
            AffineCoupling(mask, g)


# ----------------------------------------------------------------------------- the density

def test_flow_is_not_its_base():
    """Do the perturbed flows under test differ from their base Gaussians (non-trivial checks)?"""
    net, h = flow_net(2), contexts()
    qz = net(h)
    z = qz.sample((100,))
    assert (qz.log_prob(z) - net.base(h).log_prob(z)).abs().max() > 0.5


def test_log_prob_integrates_to_one():
    """In K = 2, does exp(log_prob) integrate to 1 over the plane, for each context?

    Tolerance GRID_TOL = 1e-3: a trapezoid rule on a 301 x 301 grid over [-6, 6]^2
    (spacing 0.04) has an error of order h^2 times the density's curvature; refining to
    1201 points moved these integrals by under 2e-5, and widening the box to [-8, 8]
    by under 1e-5 (the mass outside). A wrong log-determinant (a sign, a missing
    layer) changes the integral by several per cent.
    """
    net, h = flow_net(2), contexts(3)
    grid = torch.linspace(-6, 6, 301, dtype=torch.float64)
    u, v = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([u, v], -1)[:, :, None, :]  # [301, 301, 1, 2]
    with torch.no_grad():
        density = net(h).log_prob(points).exp()  # [301, 301, 3]
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=0), grid, dim=0)  # [3]
    assert_close(mass, torch.ones(3, dtype=torch.float64), atol=GRID_TOL, rtol=0)


def test_log_prob_is_the_change_of_variables():
    """Is log q(z) = log q_0(f^{-1}(z)) + log |det J_{f^{-1}}(z)|, J by autograd?"""
    K = 3
    net, h = flow_net(K), contexts()
    qz = net(h)
    f_inv = td.transforms.ComposeTransform(qz.transforms).inv
    z = 1.5 * torch.randn(B, K, dtype=torch.float64)
    J = jacobian(f_inv, z)  # [B, K, B, K]
    log_det = torch.linalg.slogdet(torch.stack([J[b, :, b, :] for b in range(B)])).logabsdet
    expected = qz.base_dist.log_prob(f_inv(z)) + log_det  # [B]
    assert_close(qz.log_prob(z), expected, atol=EXACT, rtol=EXACT)


def test_log_prob_of_its_own_draws():
    """Is log q(z) of a draw z = f(eps) equal to log q_0(eps) - log |det J_f(eps)|?"""
    net, h = flow_net(3), contexts()
    qz = net(h)
    torch.manual_seed(SEED)
    z = qz.rsample((5,))  # [S, B, K]
    torch.manual_seed(SEED)
    eps = qz.base_dist.rsample((5,))  # the same noise
    expected = qz.base_dist.log_prob(eps)
    x = eps
    for t in qz.transforms:
        y = t(x)
        expected = expected - t.log_abs_det_jacobian(x, y)
        x = y
    assert_close(x, z, atol=EXACT, rtol=EXACT)
    assert_close(qz.log_prob(z), expected, atol=EXACT, rtol=EXACT)


def test_reused_draws_give_the_computed_log_prob_and_gradient():
    """Does log q(z) of a fresh draw (its preimage reused) equal the inverted one, gradients too?"""
    net, h = flow_net(3), contexts()
    qz = net(h)
    z = qz.rsample((5,))  # [S, B, K]
    reused = qz.log_prob(z)
    computed = qz.log_prob(z.clone())  # a new tensor: the couplings are inverted
    assert_close(reused, computed, atol=EXACT, rtol=EXACT)
    named = list(net.named_parameters())
    g_reused = torch.autograd.grad(reused.sum(), [p for _, p in named], retain_graph=True)
    g_computed = torch.autograd.grad(computed.sum(), [p for _, p in named])
    for (name, _), a, b in zip(named, g_reused, g_computed):
        assert_close(a, b, atol=EXACT, rtol=EXACT, msg=name)


def test_a_coupling_of_ones_own_gives_the_same_flow():
    """Does FlowCPDNet build its layers with the ``coupling`` it is given (a notebook passes the
    one its students wrote), and does the plain AffineCoupling, which inverts every draw by
    computation, give the same draws, log-densities and gradients as the default?"""
    built = []

    def plain(mask, shift_log_scale):
        built.append(mask)
        return AffineCoupling(mask, shift_log_scale)

    default, h = flow_net(3), contexts()
    own = flow_net(3, coupling=plain)
    torch.manual_seed(SEED)
    z = default(h).rsample((5,))
    torch.manual_seed(SEED)
    qz = own(h)
    z_own = qz.rsample((5,))
    assert len(built) == 4 and all(isinstance(t, AffineCoupling) and not t.reuse_draws
                                   for t in qz.transforms)
    assert_close(z_own, z, atol=EXACT, rtol=EXACT)
    assert_close(qz.log_prob(z_own), default(h).log_prob(z), atol=EXACT, rtol=EXACT)
    fixed = z.detach().clone()  # scored at a fixed point: the gradients reach every parameter
    g_own = torch.autograd.grad(own(h).log_prob(fixed).sum(), list(own.parameters()))
    g = torch.autograd.grad(default(h).log_prob(fixed).sum(), list(default.parameters()))
    for a, b in zip(g_own, g):
        assert_close(a, b, atol=EXACT, rtol=EXACT)


# ----------------------------------------------------------------------------- the CPD net

def test_shapes_and_pathwise_gradients():
    """Does rsample((S,)) give [S, B, K], and do its gradients reach every parameter and h?"""
    S, K = 6, 4
    net = flow_net(K, dtype=torch.float32)
    h = contexts(dtype=torch.float32).requires_grad_()
    qz = net(h)
    assert qz.has_rsample
    assert (qz.batch_shape, qz.event_shape) == (torch.Size([B]), torch.Size([K]))
    z = qz.rsample((S,))
    assert z.shape == (S, B, K) and qz.log_prob(z).shape == (S, B)
    (z ** 2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert h.grad.abs().sum() > 0


def test_untrained_flow_is_its_base_gaussian():
    """Is an untrained FlowCPDNet the diagonal Gaussian of its base: same log_prob, same draws?"""
    torch.manual_seed(SEED)
    net = FlowCPDNet(5, num_inputs=H_IN, hidden_size=8, num_layers=3)
    h = contexts(dtype=torch.float32)
    qz, q0 = net(h), net.base(h)
    z = 3 * torch.randn(10, B, 5)
    assert_close(qz.log_prob(z), q0.log_prob(z))
    torch.manual_seed(SEED)
    a = qz.sample((4,))
    torch.manual_seed(SEED)
    assert_close(a, q0.sample((4,)))


def test_flow_rejects_bad_arguments():
    """Do bad sizes raise ValueError naming the argument?"""
    for kwargs, name in [(dict(outcome_shape=(2, 3)), "outcome_shape"),
                         (dict(num_layers=0), "num_layers"),
                         (dict(coupling_size=0), "coupling_size"),
                         (dict(num_inputs=0), "num_inputs"),
                         (dict(max_log_scale=0.0), "max_log_scale")]:
        args = dict(outcome_shape=2, num_inputs=H_IN, num_layers=2)
        args.update(kwargs)
        with pytest.raises(ValueError, match=name):
            FlowCPDNet(**args)


# ----------------------------------------------------------------------------- in NVIL

def flow_vae(K: int = 2, num_layers: int = 2) -> NVIL:
    """Gaussian prior, Bernoulli pixels, FFNN nets and a flow posterior (perturbed couplings)."""
    torch.manual_seed(SEED)
    decoder = functools.partial(build_ffnn_decoder, hidden_size=16)
    model = NVIL(
        JointDistribution(GaussianPriorNet(K),
                          BinarizedImageModel(1, SIZE, SIZE, K, decoder_type=decoder)),
        InferenceModel(functools.partial(FlowCPDNet, num_layers=num_layers, coupling_size=16),
                       K, num_channels=1, width=SIZE, height=SIZE, hidden_size=32,
                       encoder_type=build_ffnn_encoder, cpd_hidden_size=0))
    return perturbed(model)


def test_inference_model_builds_the_flow():
    """Does InferenceModel take FlowCPDNet as its cpd_net_type, like GaussianCPDNet?"""
    q = InferenceModel(FlowCPDNet, 3, num_channels=1, width=SIZE, height=SIZE, hidden_size=32)
    assert isinstance(q.cpd_net, FlowCPDNet) and isinstance(q.cpd_net.base, GaussianCPDNet)
    qz = q(torch.zeros(B, 1, SIZE, SIZE))
    assert (qz.batch_shape, qz.event_shape) == (torch.Size([B]), torch.Size([3]))


@pytest.mark.parametrize("estimator", ["auto", "sfe"])
def test_nvil_samples_the_rate_and_trains_every_part(estimator):
    """Is the rate the Monte Carlo one (no closed-form KL); do both estimators train every part?"""
    model, S = flow_vae(), 3
    x = random_images(B)[:][0]  # [B, 1, H, W]
    qz, pz = model.inf_model(x), model.gen_model.prior((B,))
    with pytest.raises(NotImplementedError):
        td.kl_divergence(qz, pz)
    torch.manual_seed(SEED)
    loss, figures = model.surrogate_loss(x, sample_size=S, estimator=estimator)
    torch.manual_seed(SEED)
    qz = model.inf_model(x)
    z = qz.rsample((S,)) if estimator == "auto" else qz.sample((S,))  # the same draws
    assert_close(figures["R"], (qz.log_prob(z) - pz.log_prob(z)).mean(0).detach())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_flow_posterior_moves_to_the_device(device):
    """Does the flow posterior (its masks included) move to the device, and train there?"""
    model = flow_vae().to(device)
    x = random_images(B)[:][0].to(device)
    qz = model.inf_model(x)
    z = qz.rsample((3,))
    assert z.device.type == device.type and qz.log_prob(z).device.type == device.type
    loss, _ = model.surrogate_loss(x, sample_size=3)
    loss.backward()
    assert all(p.grad is not None for p in model.inf_model.parameters())


def test_training_lowers_the_loss():
    """Do a few dozen steps of train_vae with a flow posterior lower the loss?

    Seed SEED, 64 noisy copies of two prototype images (random pixels would not do:
    an untrained decoder already predicts their best guess, 1/2, within a nat), batch
    16, 48 steps at lr 1e-2: the mean loss of the last 8 steps must lie at least 5 nats
    below that of the first 8.
    """
    model = flow_vae()
    data = prototype_images(64)
    opts = OptCollection(torch.optim.Adam(model.gen_params(), lr=1e-2),
                         torch.optim.Adam(model.inf_params(), lr=1e-2))
    log = train_vae(model, opts, data, data, batch_size=16, num_epochs=100, max_steps=48,
                    check_every=48, sample_size_eval=1, device="cpu", progress=False,
                    threads=None, generator=torch.Generator().manual_seed(SEED))
    losses = torch.tensor([v for _, v in log["training.loss"]])
    assert len(losses) == 48
    assert losses[-8:].mean() < losses[:8].mean() - 5.0


def test_importance_sampled_likelihood_bounds_the_elbo():
    """With S = 50 draws, is DRL's L at least its ELBO -D - R, for every image?

    With a sampled rate the reported ELBO is the mean of the log importance weights of
    the same 50 draws and L the log of their mean, so L >= ELBO holds by Jensen for each
    image and each seed, not only on average; the tolerance 1e-4 nats covers float32
    round-off. And L is not a copy of the ELBO: it is larger on average.
    """
    model = flow_vae(K=3)
    x = random_images(8)[:][0]
    torch.manual_seed(SEED)
    with torch.no_grad():
        D, R, L = model.DRL(x, sample_size=50)
    assert L.shape == (8,)
    assert (L >= -D - R - 1e-4).all()
    assert (L - (-D - R)).mean() > 0


def test_central_code_and_plots_of_a_flow_model(tmp_path):
    """A flow has no closed-form mean: central_code pushes the base's mean through the
    couplings, and the model plots reconstruct there."""
    from dpm_core.flows import central_code
    from dpm_core.plotting import inspect_lvm, save_samples_and_reconstructions

    torch.manual_seed(0)
    model = flow_vae()
    x = random_images(4).images.float() / 255
    qz = model.inf_model(x)
    code, is_mean = central_code(qz)
    assert code.shape == (4, 2) and not is_mean
    pushed = qz.base_dist.mean
    for transform in qz.transforms:
        pushed = transform(pushed)
    torch.testing.assert_close(code, pushed)
    assert not torch.allclose(code, qz.base_dist.mean)  # the couplings are perturbed
    inspect_lvm(model, x, num_prior=4, prior_draws=1)
    save_samples_and_reconstructions(model, x, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 0
