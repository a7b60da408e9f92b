"""A catalogue of realistic student mistakes, as data, for ``tests/test_checks.py``.

Each entry changes one solution cell of a source notebook (``old`` -> ``new``, ``old``
occurring once in the cell) and names the check that must fail (``check``, a grade id)
and words its message must contain (``words``). ``accepted`` marks a mistake that gets
through on purpose, with the reason.
"""

from typing import NamedTuple


class Mistake(NamedTuple):
    """One wrong solution and the check that must catch it."""

    assignment: str
    cell: str
    old: str
    new: str
    check: str
    words: tuple
    accepted: str = ""


_KL = "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)"
_EPS = "eps = torch.randn_like(mu)"
_Z = "return mu + eps * torch.exp(0.5 * logvar)"
_BCE = 'nll = F.binary_cross_entropy(recon_x, x, reduction="none").sum(-1)'
_LOSS = "return (nll + KL(mu, logvar)).mean()"


def _vae(cell, old, new, check, *words, accepted=""):
    return Mistake("vae_basics", cell, old, new, check, words, accepted)


def _gen(cell, old, new, check, *words, accepted=""):
    return Mistake("dpm2_generative", cell, old, new, check, words, accepted)


_BUFFERS = ('self.register_buffer("locs", torch.zeros(self.outcome_shape))\n'
            '        self.register_buffer("scales", torch.ones(self.outcome_shape))')
_NORMAL = "normal = td.Normal(loc=self.locs.expand(shape), scale=self.scales.expand(shape))"
_MIXING = "mixing = td.Categorical(logits=self.logits.expand(batch_shape + (self.num_components,)))"
_LOCS = "self.locs = nn.Parameter(torch.empty(shape).uniform_(lbound, rbound))"
_COMPONENTS = "td.Normal(loc=self.locs.expand(comp_shape), scale=self.scales.expand(comp_shape))"
_BERNOULLI = "return td.Independent(td.Bernoulli(logits=logits), len(self.outcome_shape))"
_CB = "return td.Independent(td.ContinuousBernoulli(logits=logits), len(self.outcome_shape))"
_JOINT = "return self.prior(latent_batch).log_prob(z) + self.obs_model(z).log_prob(x)"
_MARGINAL = "return torch.logsumexp(log_joint, dim=0)"
_POSTERIOR = "return td.Categorical(logits=log_joint.movedim(0, -1))  # batch_shape + [N]"
_NAIVE = "return self.obs_model(z).log_prob(x).mean(dim=0)  # batch_shape"


MISTAKES = [
    # vae_basics: the KL formula (the hidden test's list of known mistakes, and more)
    _vae("kl-solution", _KL, "-" + _KL, "kl-formula-tests", "sign is flipped"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() ** 2 + mu.pow(2) - 1.0 - 2 * logvar).sum(-1)",
         "kl-formula-tests", "standard deviation"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() ** 2 + mu.pow(2) - 1.0 - logvar).sum(-1)",
         "kl-formula-tests", "squared"),
    _vae("kl-solution", _KL, "0.5 * ((0.5 * logvar).exp() + mu.pow(2) - 1.0 - logvar).sum(-1)",
         "kl-formula-tests", "sigma = exp(logvar / 2)"),
    _vae("kl-solution", _KL, "0.5 * (mu.exp() + logvar.pow(2) - 1.0 - mu).sum(-1)",
         "kl-formula-tests", "mu and logvar are swapped"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() + mu.pow(2) - logvar).sum(-1)",
         "kl-formula-tests", "-1 is missing"),
    _vae("kl-solution", _KL, "(logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)",
         "kl-formula-tests", "factor 1/2"),
    _vae("kl-solution", _KL, "0.5 * ((-logvar).exp() + mu.pow(2) * (-logvar).exp() - 1.0 + logvar).sum(-1)",
         "kl-formula-tests", "KL(p || q)"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() - 1.0 - logvar).sum(-1)",
         "kl-formula-tests", "mu^2 term is missing"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() + mu.pow(2) - 1.0).sum(-1)",
         "kl-formula-tests", "-log sigma^2"),
    _vae("kl-solution", _KL, _KL + ".detach()", "kl-formula-tests", "no gradient"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar.detach()).sum(-1)",
         "kl-formula-tests", "d KL / d logvar"),
    # vae_basics: the KL reduction
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)",
         "kl-reduction-tests", "sum the per-coordinate terms"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).mean(-1)",
         "kl-reduction-tests", "mean over the latent"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(1)",
         "kl-reduction-tests", "dim 1"),
    _vae("kl-solution", _KL, "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum()",
         "kl-reduction-tests", "reduced over everything"),
    # vae_basics: the distribution of z
    _vae("reparametrise-solution", _EPS, "eps = torch.rand_like(mu)",
         "reparametrise-distribution-tests", "randn_like"),
    _vae("reparametrise-solution", _Z, "return mu + eps * torch.exp(logvar)",
         "reparametrise-distribution-tests", "exp(0.5 * logvar)"),
    _vae("reparametrise-solution", _Z, "return mu + eps",
         "reparametrise-distribution-tests", "not scaled"),
    _vae("reparametrise-solution", _Z, "return mu + eps * logvar",
         "reparametrise-distribution-tests", "logvar^2"),
    _vae("reparametrise-solution", _Z, "return mu + eps * torch.exp(0.25 * logvar)",
         "reparametrise-distribution-tests", "sigma, not sigma^2"),
    _vae("reparametrise-solution", _Z, "return logvar + eps * torch.exp(0.5 * mu)",
         "reparametrise-distribution-tests", "swapped"),
    _vae("reparametrise-solution", _EPS, "eps = torch.randn_like(mu[..., :1])",
         "reparametrise-distribution-tests", "correlated"),
    _vae("reparametrise-solution", _EPS, "torch.manual_seed(0)\n    " + _EPS,
         "reparametrise-distribution-tests", "same z"),
    _vae("reparametrise-solution", _EPS, "eps = torch.from_numpy(np.random.randn(*mu.shape))",
         "reparametrise-distribution-tests", "dtype"),
    # vae_basics: the gradients of z
    _vae("reparametrise-solution", _Z, "return (mu + eps * torch.exp(0.5 * logvar)).detach()",
         "reparametrise-gradient-tests", "carries no gradient"),
    _vae("reparametrise-solution", _Z, "return td.Normal(mu, torch.exp(0.5 * logvar)).sample()",
         "reparametrise-gradient-tests", "carries no gradient"),
    _vae("reparametrise-solution", _Z, "return mu + eps * torch.exp(0.5 * logvar).detach()",
         "reparametrise-gradient-tests", "no gradient reaches logvar"),
    # vae_basics: the terms of the loss (the hidden test's list of known mistakes, and more)
    _vae("loss-solution", _LOSS, "return nll.mean()", "loss-terms-tests", "KL term is missing"),
    _vae("loss-solution", _LOSS, "return (nll - KL(mu, logvar)).mean()", "loss-terms-tests",
         "wrong sign"),
    _vae("loss-solution", _LOSS, "return (-nll - KL(mu, logvar)).mean()", "loss-terms-tests",
         "this is the ELBO"),
    _vae("loss-solution", _LOSS, "return (-nll + KL(mu, logvar)).mean()", "loss-terms-tests",
         "reconstruction term has the wrong sign"),
    _vae("loss-solution", _BCE, 'nll = F.binary_cross_entropy(recon_x, x, reduction="none").mean(-1)',
         "loss-terms-tests", "averaged over the pixels"),
    _vae("loss-solution", _LOSS, "return (nll + KL(mu, logvar) / mu.shape[-1]).mean()",
         "loss-terms-tests", "KL is averaged over the latent"),
    _vae("loss-solution", _BCE, 'nll = F.binary_cross_entropy(x, recon_x, reduction="none").sum(-1)',
         "loss-terms-tests", "recon_x and x are swapped"),
    _vae("loss-solution", _BCE,
         'nll = F.binary_cross_entropy_with_logits(recon_x, x, reduction="none").sum(-1)',
         "loss-terms-tests", "not logits"),
    _vae("loss-solution", _LOSS, "return (nll + KL(logvar, mu)).mean()", "loss-terms-tests",
         "arguments of KL are swapped"),
    _vae("loss-solution", _BCE,
         'nll = F.binary_cross_entropy(recon_x.detach(), x, reduction="none").sum(-1)',
         "loss-terms-tests", "recon_x"),
    _vae("loss-solution", _LOSS, "return (nll + KL(mu, logvar)).mean().item()", "loss-terms-tests",
         "torch.Tensor"),
    # vae_basics: the batch reduction of the loss
    _vae("loss-solution", _LOSS, "return (nll + KL(mu, logvar)).sum()", "loss-batch-tests",
         "summed over the batch"),
    _vae("loss-solution", _LOSS, "return nll + KL(mu, logvar)", "loss-batch-tests",
         "one value per image"),
    _vae("loss-solution", _BCE, 'nll = F.binary_cross_entropy(recon_x, x, reduction="sum")',
         "loss-batch-tests", "mean of the losses of its images"),
    # dpm2_generative: the Gaussian prior
    _gen("gaussian-prior-solution", "return td.Independent(normal, len(self.outcome_shape))",
         "return normal", "gaussian-prior-tests", "td.Independent"),
    _gen("gaussian-prior-solution", "return td.Independent(normal, len(self.outcome_shape))",
         "return td.Independent(normal, 1)", "gaussian-prior-tests", "td.Independent"),
    _gen("gaussian-prior-solution", _NORMAL,
         "normal = td.Normal(loc=self.locs.expand(shape), scale=self.scales.expand(shape) ** 2 * 2)",
         "gaussian-prior-tests", "standard deviation"),
    _gen("gaussian-prior-solution", _BUFFERS,
         "self.locs = nn.Parameter(torch.zeros(self.outcome_shape))\n"
         "        self.scales = nn.Parameter(torch.ones(self.outcome_shape))",
         "gaussian-prior-buffers-tests", "register_buffer"),
    _gen("gaussian-prior-solution", _BUFFERS,
         "self.locs = torch.zeros(self.outcome_shape)\n        self.scales = torch.ones(self.outcome_shape)",
         "gaussian-prior-buffers-tests", "buffers"),
    _gen("gaussian-prior-solution", _NORMAL,
         "normal = td.Normal(loc=torch.zeros(shape), scale=torch.ones(shape))",
         "gaussian-prior-buffers-tests", "float32"),
    # dpm2_generative: the mixture prior
    _gen("mog-prior-solution", _MIXING,
         "mixing = td.Categorical(probs=self.logits.expand(batch_shape + (self.num_components,)))",
         "mog-prior-shapes-tests", "Categorical"),
    _gen("mog-prior-solution", "            len(self.outcome_shape))\n        mixing",
         "            1)\n        mixing", "mog-prior-shapes-tests", "td.Independent"),
    _gen("mog-prior-solution", _MIXING,
         "mixing = td.Categorical(logits=torch.zeros(batch_shape + (self.num_components,)))",
         "mog-prior-values-tests", "ignores the mixing logits"),
    _gen("mog-prior-solution", "return F.softplus(self.raw_scales)", "return self.raw_scales",
         "mog-prior-parameters-tests", "positivity transform"),
    _gen("mog-prior-solution", _LOCS, "self.locs = nn.Parameter(torch.rand(shape))",
         "mog-prior-parameters-tests", "outside"),
    _gen("mog-prior-solution", _LOCS,
         "self.locs = nn.Parameter(torch.full(shape, (lbound + rbound) / 2))",
         "mog-prior-parameters-tests", "all equal"),
    _gen("mog-prior-solution", _LOCS,
         'self.register_buffer("locs", torch.empty(shape).uniform_(lbound, rbound))',
         "mog-prior-parameters-tests", "nn.Parameter"),
    _gen("mog-prior-solution", _COMPONENTS,
         "td.Normal(loc=self.locs.expand(comp_shape), scale=self.scales.expand(comp_shape) ** 2)",
         "mog-prior-values-tests", "standard deviations"),
    # dpm2_generative: the image models
    _gen("binarized-image-model-solution", _BERNOULLI,
         "return td.Independent(td.Bernoulli(probs=logits), len(self.outcome_shape))",
         "binarized-image-model-tests", "logits="),
    _gen("binarized-image-model-solution", _BERNOULLI, "return td.Bernoulli(logits=logits)",
         "binarized-image-model-tests", "td.Independent"),
    _gen("binarized-image-model-solution", _BERNOULLI,
         "return td.Independent(td.Bernoulli(logits=logits), 1)",
         "binarized-image-model-tests", "td.Independent"),
    _gen("continuous-image-model-solution", _CB,
         "return td.Independent(td.Bernoulli(logits=logits), len(self.outcome_shape))",
         "continuous-image-model-tests", "continuous Bernoulli"),
    _gen("continuous-image-model-solution", _CB,
         "return td.Independent(td.ContinuousBernoulli(probs=torch.sigmoid(logits).round()), 3)",
         "continuous-image-model-tests", "logits"),
    _gen("continuous-image-model-solution", _CB, "return td.ContinuousBernoulli(logits=logits)",
         "continuous-image-model-tests", "td.Independent"),
    # dpm2_generative: the joint distribution
    _gen("joint-distribution-solution", _JOINT, "return self.obs_model(z).log_prob(x)",
         "joint-log-prob-tests", "log p(z) is missing"),
    _gen("joint-distribution-solution", _JOINT, "return self.prior(latent_batch).log_prob(z)",
         "joint-log-prob-tests", "log p(x|z) is missing"),
    _gen("joint-distribution-solution", _MARGINAL, "return log_joint.mean(0)",
         "joint-log-marginal-tests", "averages the log joint"),
    _gen("joint-distribution-solution", _MARGINAL,
         "return torch.logsumexp(log_joint, dim=0) - math.log(z.shape[0])",
         "joint-log-marginal-tests", "average of p(z, x)"),
    _gen("joint-distribution-solution", _MARGINAL,
         "return torch.logsumexp(self.obs_model(z).log_prob(x), dim=0)",
         "joint-log-marginal-tests", "leaves out the prior"),
    _gen("joint-distribution-solution", _POSTERIOR, "return td.Categorical(logits=log_joint)",
         "joint-posterior-tests", "last"),
    _gen("joint-distribution-solution", _POSTERIOR,
         "return td.Categorical(logits=self.obs_model(z).log_prob(x).movedim(0, -1))",
         "joint-posterior-tests", "proportional to p(z) p(x|z)"),
    _gen("joint-distribution-solution", _NAIVE, "return -self.obs_model(z).log_prob(x).mean(dim=0)",
         "joint-naive-bound-tests", "wrong sign"),
    _gen("joint-distribution-solution", _NAIVE,
         "return (pz.log_prob(z) + self.obs_model(z).log_prob(x)).mean(dim=0)",
         "joint-naive-bound-tests", "log p(z, x)"),
    _gen("joint-distribution-solution", _NAIVE,
         "return torch.logsumexp(self.obs_model(z).log_prob(x), 0) - math.log(num_samples)",
         "joint-naive-bound-tests", "larger than"),
    _gen("joint-distribution-solution", _NAIVE, "return self.obs_model(z).log_prob(x).sum(dim=0)",
         "joint-naive-bound-tests", "naive_lowerbound"),
    _gen("joint-distribution-solution", _NAIVE,
         "return self.obs_model(z).log_prob(x).mean(dim=0).detach()",
         "joint-naive-bound-tests", "gradient"),
]
