"""The code explorer without a browser: every control is a plain method, checked against the model.

The reference is the model itself: ``model.gen_model.obs_model(z)`` computed here, in
evaluation mode under ``torch.no_grad()``, for the code z that the view reports; q(z|x)'s own
probabilities for the mode of an encoded image; ``torch.manual_seed`` and ``p(z).sample()``
for a prior draw. Models are tiny and untrained (seeded by the autouse fixture of
``conftest.py``), binary (K = 12 bits) or categorical (L = 3 variables of C = 4 classes),
with an image decoder or a flat one.
"""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
import pytest
import torch
import torch.distributions as td
from PIL import Image
from torch.testing import assert_close

from dpm_core import widgets
from dpm_core.conditionals import BinarizedImageModel
from dpm_core.discrete import BernoulliCPDNet, BernoulliPriorNet, OneHotCPDNet, OneHotPriorNet
from dpm_core.inference import InferenceModel
from dpm_core.joint import JointDistribution
from dpm_core.nvil import NVIL
from dpm_core.reference import build_reference_vae
from dpm_core.widgets import CodeExplorer

K, C = 12, 4  # bits, or L = K / C = 3 variables of C classes
N = 20  # test images
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def make_model(kind: str = "binary", decoder: str = "image", device="cpu") -> NVIL:
    """A tiny untrained NVIL with a binary or categorical code, on 28 x 28 binary images.

    ``decoder="image"``: BinarizedImageModel and an InferenceModel over ``[N, 1, 28, 28]``;
    ``"flat"``: one BernoulliCPDNet each way over ``[N, 784]`` (a sigmoid belief network).
    """
    prior = BernoulliPriorNet(K) if kind == "binary" else OneHotPriorNet(K, num_classes=C)
    q_type = BernoulliCPDNet if kind == "binary" else functools.partial(OneHotCPDNet,
                                                                        num_classes=C)
    if decoder == "image":
        model = NVIL(JointDistribution(prior, BinarizedImageModel(1, 28, 28, K)),
                     InferenceModel(q_type, K, width=28, height=28, hidden_size=16))
    else:
        model = NVIL(JointDistribution(prior, BernoulliCPDNet(784, num_inputs=K)),
                     q_type(K, num_inputs=784))
    return model.to(device)


def make_data(decoder: str = "image", device="cpu") -> torch.Tensor:
    shape = (N, 1, 28, 28) if decoder == "image" else (N, 784)
    return torch.rand(shape, device=device).round()


def decoded(model, z: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """The reference: E[x|z] (or a draw x ~ p(x|z)) for codes ``[..., K]``, as images (CPU)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        px_z = model.gen_model.obs_model(z.to(next(model.parameters()).device))
        x = px_z.mean if mode == "mean" else px_z.sample()
    model.train(was_training)
    return x.reshape(z.shape[:-1] + (1, 28, 28)).cpu()


def png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


#: the registry of models: the kind of code and the decoder
MODELS = [pytest.param("binary", "image", id="binary-image"),
          pytest.param("binary", "flat", id="binary-flat"),
          pytest.param("categorical", "image", id="categorical-image"),
          pytest.param("categorical", "flat", id="categorical-flat")]
KINDS = ["binary", "categorical"]


def some_code(kind: str) -> torch.Tensor:
    """A valid code ``[K]`` that is neither all 0s nor class 0 everywhere."""
    if kind == "binary":
        return (torch.arange(K) % 3 == 0).float()
    return torch.nn.functional.one_hot(torch.tensor([2, 0, 3]), C).flatten().float()


# ----------------------------------------------------------------------------- the model's code

@pytest.mark.parametrize("kind, decoder", MODELS)
def test_the_kind_of_code_is_read_from_the_prior(kind, decoder):
    """Does the view see K bits, or L variables of C classes, from p(z) alone?"""
    view = CodeExplorer(make_model(kind, decoder))
    assert view.kind == kind and view.K == K
    assert (view.num_variables, view.num_classes) == ((K, 2) if kind == "binary" else (K // C, C))
    assert repr(view).startswith(f"CodeExplorer({kind}, ")


@pytest.mark.parametrize("model", [build_reference_vae(latent_size=2, hidden_size=16),
                                   NVIL(JointDistribution(BernoulliPriorNet(K),
                                                          BernoulliCPDNet(784, num_inputs=K)),
                                        BernoulliCPDNet(K, num_inputs=784)).gen_model],
                         ids=["gaussian", "no-inference-model"])
def test_a_continuous_or_incomplete_model_is_refused(model):
    """Does a Gaussian model get a ValueError that names LatentExplorer, and a model without
    q(z|x) one that names the missing part?"""
    match = "LatentExplorer" if hasattr(model, "inf_model") or hasattr(model, "as_latent_model") \
        else "inf_model"
    with pytest.raises(ValueError, match=match):
        CodeExplorer(model)


# ----------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("kind, decoder", MODELS)
def test_set_code_decodes_exactly_that_code(kind, decoder):
    """Does set_code show the decoder mean at z, computed without gradients?"""
    model = make_model(kind, decoder)
    view = CodeExplorer(model, make_data(decoder))
    z = some_code(kind)
    view.set_code(z)
    assert_close(view.z, z)
    assert view.image.shape == (1, 28, 28) and not view.image.requires_grad
    assert_close(view.image, decoded(model, z))


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_runs_on_the_models_device(kind, device):
    """On each device, is the image the decoder mean there, and the state on the CPU?"""
    model = make_model(kind, device=device)
    view = CodeExplorer(model, make_data(device=device))
    view.set_code(some_code(kind))
    assert view.z.device.type == "cpu" and view.image.device.type == "cpu"
    assert_close(view.image, decoded(model, some_code(kind)))


@pytest.mark.parametrize("kind", KINDS)
def test_sample_mode_draws_from_p_x_given_z(kind):
    """In sample mode, is the image the draw x ~ p(x|z) that the same seed gives, and in mean
    mode the mean again?"""
    model = make_model(kind)
    view = CodeExplorer(model)
    z = some_code(kind)
    view.set_code(z)
    torch.manual_seed(123)
    view.set_mode("sample")
    torch.manual_seed(123)
    assert_close(view.image, decoded(model, z[None], "sample")[0])
    assert set(view.image.unique().tolist()) <= {0.0, 1.0}
    view.set_mode("mean")
    assert_close(view.image, decoded(model, z))


@pytest.mark.parametrize("training", [True, False])
def test_decoding_is_in_eval_mode_and_keeps_the_models_mode(training):
    """With dropout in the decoder, is the image the eval-mode mean, and the model's mode kept?"""
    model = make_model("binary")
    model.gen_model.cpd_net.decoder[0].p = 0.5
    model.train(training)
    view = CodeExplorer(model, make_data())
    view.set_code(some_code("binary"))
    assert model.training is training
    assert_close(view.image, decoded(model, some_code("binary")))


# ----------------------------------------------------------------------------- changing the code

def test_flip_changes_exactly_one_bit():
    """Does flip(k) change bit k alone, decode the new code, and undo itself?"""
    model = make_model("binary")
    view = CodeExplorer(model)
    z = some_code("binary")
    view.set_code(z)
    for k in (0, 5, K - 1):
        view.flip(k)
        expected = z.clone()
        expected[k] = 1 - expected[k]
        assert_close(view.z, expected)
        assert_close(view.image, decoded(model, expected))
        view.flip(k)
        assert_close(view.z, z)


def test_set_class_changes_exactly_one_variable():
    """Does set_class(l, c) make block l the one-hot e_c and leave the other blocks alone?"""
    model = make_model("categorical")
    view = CodeExplorer(model)
    z = some_code("categorical")
    view.set_code(z)
    view.set_class(1, 2)
    expected = z.view(3, C).clone()
    expected[1] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert_close(view.z, expected.flatten())
    assert view.classes.tolist() == [2, 2, 3]
    assert_close(view.image, decoded(model, expected.flatten()))
    view.set_class(1, 2)  # already its class: nothing changes
    assert_close(view.z, expected.flatten())


@pytest.mark.parametrize("kind, decoder", MODELS)
def test_encode_takes_the_mode_of_each_factor_of_q(kind, decoder):
    """Is encode(i) the most probable code of q(z|x_i): q's probabilities thresholded at 1/2
    (bits) or their argmax per variable, and no single change of it more probable under q?"""
    model = make_model(kind, decoder)
    x = make_data(decoder)
    view = CodeExplorer(model, x)
    model.eval()
    for i in (0, 7, N - 1):
        view.encode(i)
        with torch.no_grad():
            q = model.inf_model(x[i:i + 1])  # batch_shape [1]
        if kind == "binary":
            probs = q.base_dist.probs[0]  # [K]
            expected = (probs > 0.5).float()
        else:
            probs = q.base_dist.base_dist.probs[0]  # [L, C]
            expected = torch.nn.functional.one_hot(probs.argmax(-1), C).flatten().float()
        assert_close(view.z, expected)
        assert_close(view.image, decoded(model, expected))
        # the mode beats every neighbour under q (the strip holds them all on one page)
        neighbours = view.strip_codes()
        assert (q.log_prob(neighbours) <= q.log_prob(view.z[None]) + 1e-6).all()


@pytest.mark.parametrize("kind", KINDS)
def test_sample_prior_is_a_draw_from_p_z(kind):
    """With a seed, is the code the draw that seed gives from p(z), and torch's state kept?"""
    model = make_model(kind)
    view = CodeExplorer(model)
    state = torch.get_rng_state()
    view.sample_prior(seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(7)
    expected = model.gen_model.prior(()).sample()
    assert_close(view.z, expected)
    assert_close(view.image, decoded(model, expected))
    view.sample_prior()  # no seed: a draw from torch's own stream, still a valid code
    view.set_code(view.z)


# ----------------------------------------------------------------------------- the strip

@pytest.mark.parametrize("kind, decoder", MODELS)
def test_strip_is_every_single_change_decoded_separately(kind, decoder):
    """Is each strip image the decoder mean of z with one change, as if decoded on its own, and
    its effect the mean absolute pixel change from E[x|z]?"""
    model = make_model(kind, decoder)
    view = CodeExplorer(model, page_size=5)
    z = some_code(kind)
    view.set_code(z)
    pages = range(view.num_pages) if kind == "binary" else range(view.num_variables)
    for p in pages:
        if kind == "binary":
            view.set_page(p)
        else:
            view.set_variable(p)
        codes = view.strip_codes()
        changes = view.strip_changes()
        assert view.strip.shape == (len(changes), 1, 28, 28) == (codes.shape[0], 1, 28, 28)
        for j, (unit, value) in enumerate(changes):
            expected = z.clone()
            if kind == "binary":
                assert value == 1 - int(z[unit])
                expected[unit] = value
            else:
                expected.view(3, C)[unit] = torch.nn.functional.one_hot(torch.tensor(value), C)
            assert_close(codes[j], expected)
            alone = decoded(model, expected)
            assert_close(view.strip[j], alone)
            assert_close(view.effects[j], (alone - decoded(model, z)).abs().mean())
    if kind == "binary":  # 12 bits in pages of 5: 0-4, 5-9, 10-11
        assert view.num_pages == 3 and [k for k, _ in view.strip_changes()] == [10, 11]
    else:
        assert [c for _, c in view.strip_changes()] == list(range(C))


def test_strip_follows_the_code_and_the_mode_leaves_it_at_the_mean():
    """After a flip, does the strip flip the new code; in sample mode, does it still show means?"""
    model = make_model("binary")
    view = CodeExplorer(model)
    view.flip(3)
    assert view.strip_changes()[3] == (3, 0) and view.strip_changes()[0] == (0, 1)
    view.set_mode("sample")
    assert_close(view.strip, decoded(model, view.strip_codes()))


def test_strip_picture_has_a_tile_per_change():
    """Is the strip picture as wide as 10 tiles and as high as its rows, with the images in it?"""
    view = CodeExplorer(make_model("binary"), page_size=12)
    pixels = view.strip_pixels()
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    tile = 56 + 4  # 28 px at scale 2, and the gap
    assert pixels.shape[1] == 10 * tile + 4 and pixels.shape[0] == 2 * (56 + 28) + 4
    first = view.strip[0, 0]
    expected = (first * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(pixels[4:4 + 56:2, 4:4 + 56:2, 0], expected)


# ----------------------------------------------------------------------------- errors

def test_invalid_codes_and_indices_raise_errors_that_name_the_problem():
    """Do a wrong size, a non-binary entry, a block with 0 or 2 ones, an index out of range,
    the other kind's method and an unknown mode each raise a ValueError saying so?"""
    binary = CodeExplorer(make_model("binary"))
    categorical = CodeExplorer(make_model("categorical"))
    with pytest.raises(ValueError, match=r"z must have shape \[K\] = \[12\], got \[11\]"):
        binary.set_code(torch.zeros(11))
    with pytest.raises(ValueError, match=r"only 0s and 1s, got 0.5 at index 2"):
        binary.set_code(torch.tensor([0, 1, 0.5] + [0] * 9))
    with pytest.raises(ValueError, match=r"one-hot .* variables \[0, 2\] hold \[0, 2\] ones"):
        categorical.set_code(torch.tensor([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0.0]))
    with pytest.raises(ValueError, match=r"k must be an index in 0..11 .* got 12"):
        binary.flip(12)
    with pytest.raises(ValueError, match=r"c must be an index in 0..3 .* got 4"):
        categorical.set_class(0, 4)
    with pytest.raises(ValueError, match=r"l must be an index in 0..2 .* got -1"):
        categorical.set_class(-1, 0)
    with pytest.raises(ValueError, match=r"flip\(k\) is for binary codes.*use set_class"):
        categorical.flip(0)
    with pytest.raises(ValueError, match=r"set_class\(l, c\) is for categorical codes.*use flip"):
        binary.set_class(0, 0)
    with pytest.raises(ValueError, match="encode needs test images"):
        binary.encode(0)
    with pytest.raises(ValueError, match="mode must be one of"):
        binary.set_mode("median")
    with pytest.raises(ValueError, match="page_size must be a positive int, got 0"):
        CodeExplorer(make_model("binary"), page_size=0)
    # a failed call leaves the state as it was
    assert_close(binary.z, torch.zeros(K))
    assert categorical.classes.tolist() == [0, 0, 0]


def test_encode_checks_its_index():
    """Is a test image index out of range refused?"""
    view = CodeExplorer(make_model("binary"), make_data())
    with pytest.raises(ValueError, match=r"i must be an index in 0..19"):
        view.encode(N)


# ----------------------------------------------------------------------------- widgets

def test_bit_toggles_flip_their_bit():
    """Does pressing toggle k flip bit k (and colour it), and a flip by method press the toggle?"""
    model = make_model("binary")
    view = CodeExplorer(model, make_data())
    view.widget
    toggles = view._units
    toggles[4].value = True
    assert view.z.tolist() == [float(k == 4) for k in range(K)]
    assert toggles[4].button_style == "info"
    assert_close(view.image, decoded(model, view.z))
    assert view._decoded.value == view.png
    view.flip(7)
    assert toggles[7].value and toggles[7].button_style == "info"
    view.encode(2)
    assert [t.value for t in toggles] == [bool(b) for b in view.z.tolist()]
    assert view._index.value == 2


def test_class_dropdowns_set_their_variable():
    """Does choosing class c in dropdown l set that variable, and set_class move the dropdown?"""
    model = make_model("categorical")
    view = CodeExplorer(model)
    view.widget
    dropdowns = view._units
    dropdowns[2].value = 3
    assert view.classes.tolist() == [0, 0, 3]
    assert_close(view.image, decoded(model, view.z))
    view.set_class(0, 1)
    assert dropdowns[0].value == 1
    view._strip_select.value = 2
    assert view.variable == 2 and [c for _, c in view.strip_changes()] == list(range(C))


def test_page_dropdown_shows_other_bits():
    """For a code longer than a page, does the page selector move the strip to those bits?"""
    view = CodeExplorer(make_model("binary"), page_size=5)
    view.widget
    view._strip_select.value = 2
    assert view.page == 2 and [k for k, _ in view.strip_changes()] == [10, 11]
    assert png_pixels(view._strip_image.value).shape[:2] == view.strip_pixels().shape[:2]


# ----------------------------------------------------------------------------- display

@pytest.mark.parametrize("kind", KINDS)
def test_static_fallback_without_widgets(kind, monkeypatch):
    """Where no widget can live (no front end), is the display a PNG and text, no widget built?"""
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    view = CodeExplorer(make_model(kind), make_data())
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "image/png"}
    image = png_pixels(base64.b64decode(bundle["image/png"]))
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 800
    assert view._widget is None


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_is_drawn_while_grading(kind, monkeypatch):
    """While nbgrader grades, is the display one line of text, with no figure or widget?"""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    view = CodeExplorer(make_model(kind), make_data())
    monkeypatch.setattr(view, "static_png", lambda: pytest.fail("drawn while grading"))
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/plain"} and "\n" not in bundle["text/plain"]
    assert view._widget is None


def test_live_display_carries_the_widget_and_the_fallback(monkeypatch):
    """With a widget front end, does the display hold the container's view and the static PNG?"""
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setattr(widgets.view, "live_widgets_possible", lambda: True)
    view = CodeExplorer(make_model("categorical"), make_data())
    bundle = view._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == view.widget.model_id
    assert "image/png" in bundle and bundle["text/plain"].startswith("CodeExplorer(categorical")


def test_a_long_code_builds_and_updates():
    """For K = 200 bits (pages of 40), do the widgets build, and does a flip on page 3 show?"""
    K_long = 200
    model = NVIL(JointDistribution(BernoulliPriorNet(K_long),
                                   BernoulliCPDNet(784, num_inputs=K_long)),
                 BernoulliCPDNet(K_long, num_inputs=784))
    view = CodeExplorer(model)
    assert len(view.widget.children) > 0 and len(view._units) == K_long
    view.set_page(3)
    view.flip(130)
    assert view.strip_changes()[10] == (130, 0) and view._units[130].value
    assert view.strip.shape == (40, 1, 28, 28)
    assert isinstance(view.prior(), td.Independent)
