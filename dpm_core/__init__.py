r"""dpm_core: reference parts for deep continuous latent variable models.

A latent variable model is a joint density p(z, x) = p(z) p(x|z): a prior
over a code z and an observation model that decodes z into a distribution
over images x. Its marginal p(x) = \int p(z) p(x|z) dz is intractable once the
decoder is a neural network, so we train it together with an approximate
posterior q(z|x) on the evidence lower bound

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) = -D - R  <=  log p(x),

where the distortion D and the rate R are the two costs of the code.

Two gradient estimators
-----------------------
The gradient of E_q[f(z)] with respect to q's parameters lambda has two
standard Monte Carlo estimators, and the course uses both:

* **pathwise** (the reparameterisation trick): when z can be written as a
  differentiable function of lambda and parameter-free noise, e.g.
  z = mu + sigma * eps, autograd differentiates through the sample. In
  ``torch.distributions`` this is ``rsample``. Low variance; needs a
  reparameterisable q (Gaussians, not mixtures or discrete codes).
* **score function** (REINFORCE / NVIL): E_q[f(z) grad log q(z|x)]. Works
  for any q that can score its own samples, but is noisy; control variates
  (:mod:`dpm_core.variance`) subtract a baseline from f to tame it.

:class:`NVIL` picks the pathwise estimator when ``q.has_rsample`` and the
score-function estimator otherwise.

A mixture of reparameterisable components, such as the MoG q(z|x) of
:class:`MoGCPDNet`, has no ``rsample``, yet only the choice of component is
discrete. ``NVIL(..., estimator="mixture")`` draws the component c ~ Cat(w)
and z from q_c pathwise, and combines the score function for the mixing
weights, ``(r - b) * grad log w_c``, with pathwise gradients for the
components and the generative model: unbiased, and on FashionMNIST thousands
of times less noisy than the score function for all of q's parameters
(``benchmarks/estimator_variance.py``).

Flow posteriors
---------------
A normalising flow (:class:`FlowCPDNet`) draws eps from a diagonal Gaussian
q_0(z|x) and returns z = f(eps) for a bijection f, a chain of affine couplings
(:class:`AffineCoupling`) conditioned on the encoder's features. ``rsample``
differentiates through f, so the pathwise estimator applies; ``log_prob`` is
exact, log q(z|x) = log q_0(f^{-1}(z)) - log |det J_f(f^{-1}(z))|; and as no KL
to the prior has a closed form, NVIL estimates the rate from the draws,
log q(z|x) - log p(z).

Modules
-------
============  ===========================================================
priors        p(z): :class:`GaussianPriorNet`, :class:`MoGPriorNet`
networks      encoders and decoders (FFNN and CNN) for structured batches
conditionals  CPD nets: Gaussian and MoG families, image models p(x|z)
joint         :class:`JointDistribution` p(z) p(x|z)
inference     :class:`InferenceModel` q(z|x)
flows         flow q(z|x): :class:`FlowCPDNet`, :class:`AffineCoupling`
discrete      binary and categorical codes, their relaxations, and an exact
              test bed by enumeration (a package)
variance      control variates for the score-function estimator
kl            closed-form (diagonal and full-covariance Gaussian) and Monte Carlo KL
nvil          :class:`NVIL`, the objective and its estimators
ppca          probabilistic PCA, the linear-Gaussian model with exact answers
vae           the compact first VAE (``reparametrise``, ``loss_func``)
training      :func:`train_vae`, :func:`assess`, :class:`OptCollection`
threads       the CPU thread count of a training loop, chosen by timing it
data          tensor-resident FashionMNIST / MNIST (a package)
dequantise    grey levels as a model of discrete pixels: :class:`Dequantised`,
              the bound on log P(k) in bits per dimension
plotting      image grids, training curves, model figures, latent plots
              (a package)
widgets       interactive latent explorer, interpolation and posterior views
              (a package)
utils         argument checks shared by the modules
grading       helpers for the notebooks' self-checks and hidden tests
selfcheck     ``check("kl")``: the notebooks' self-checks, one line per exercise
============  ===========================================================

Shape letters
-------------
Shape comments such as ``# [S, B, K]`` use one meaning per letter: S samples,
B batch, N items of a data set (a split, or the test images a view encodes),
M mixture components, K latent size, D data dimensions, U hidden units (the
hidden size), T points along a path, and for images torch's ``[C, H, W]``:
C channels, H height, W width. (``D``, ``R`` and ``L`` as *names*, the
distortion, rate and log-likelihood of :meth:`NVIL.DRL`, are not shape
letters.) ``batch_shape`` and ``event_shape`` follow ``torch.distributions``:
every ``log_prob`` returns one number per batch element.
"""

from .conditionals import BinarizedImageModel, ContinuousImageModel, CPDNet, GaussianCPDNet, MoGCPDNet
from .data import Binarizer, DataSplits, ImageData, load_data, load_fashion_mnist, load_mnist, read_idx
from .dequantise import Dequantised, DequantisedImageModel, ImageLogDensity, bits_per_dim, discrete_bound
from .discrete import (
    BernoulliCPDNet,
    BernoulliPriorNet,
    LeaveOneOut,
    OneHotCPDNet,
    OneHotPriorNet,
    enumerate_codes,
    exact_elbo,
    relaxed,
    straight_through,
)
from .flows import AffineCoupling, FlowCPDNet
from .inference import InferenceModel
from .joint import JointDistribution
from .kl import KL, KL_full, kl_or_mc, mc_kl
from .networks import (
    FlattenImage,
    MySequential,
    ReshapeLast,
    build_cnn_decoder,
    build_cnn_encoder,
    build_ffnn_decoder,
    build_ffnn_encoder,
)
from .nvil import NVIL
from .ppca import PPCA, LinearGaussianCPDNet
from .priors import CategoricalPriorNet, GaussianPriorNet, MoGPriorNet, PriorNet
from .training import OptCollection, assess, default_device, seed_all, train_vae
from .vae import VAE, loss_func, reparametrise
from .variance import Baseline, CentredReward, CVChain, ScaledReward, SelfCritic, VarianceReduction

__version__ = "0.1.0"

__all__ = [
    "PriorNet", "GaussianPriorNet", "MoGPriorNet", "CategoricalPriorNet",
    "CPDNet", "GaussianCPDNet", "MoGCPDNet", "BinarizedImageModel", "ContinuousImageModel",
    "ReshapeLast", "FlattenImage", "MySequential",
    "build_ffnn_decoder", "build_cnn_decoder", "build_ffnn_encoder", "build_cnn_encoder",
    "JointDistribution", "InferenceModel", "FlowCPDNet", "AffineCoupling",
    "VarianceReduction", "CentredReward", "ScaledReward", "SelfCritic", "Baseline", "CVChain",
    "NVIL", "KL", "KL_full", "mc_kl", "kl_or_mc",
    "BernoulliPriorNet", "OneHotPriorNet", "BernoulliCPDNet", "OneHotCPDNet", "LeaveOneOut",
    "enumerate_codes", "exact_elbo", "relaxed", "straight_through",
    "PPCA", "LinearGaussianCPDNet", "VAE", "reparametrise", "loss_func",
    "seed_all", "default_device", "OptCollection", "assess", "train_vae",
    "Binarizer", "DataSplits", "ImageData", "load_data", "load_fashion_mnist", "load_mnist", "read_idx",
    "Dequantised", "DequantisedImageModel", "ImageLogDensity", "bits_per_dim", "discrete_bound",
]
