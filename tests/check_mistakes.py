"""A catalogue of realistic student mistakes, as data, for ``tests/test_checks.py``.

Each entry changes one solution cell of a source notebook (``old`` -> ``new``, ``old``
occurring once in the cell) and names the check that must fail (``check``, a grade id)
and words its message must contain (``words``). ``accepted`` marks a mistake that gets
through on purpose, with the reason. A mistake costs points once: no other check may fail
because of it, unless the entry declares that check in ``also``, with the reason in
``why_also`` (a mistake genuinely wrong in the skills of two cells; none is declared now).
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
    also: tuple = ()
    why_also: str = ""


_KL = "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)"
_EPS = "eps = torch.randn_like(mu)"
_Z = "return mu + eps * torch.exp(0.5 * logvar)"
_BCE = 'nll = F.binary_cross_entropy(recon_x, x, reduction="none").sum(-1)'
_LOSS = "return (nll + KL(mu, logvar)).mean()"
_FULL_M = "M = torch.linalg.solve_triangular(L_p, L_q, upper=False)"
_FULL_Y = "y = torch.linalg.solve_triangular(L_p, (mu_p - mu_q).unsqueeze(-1), upper=False)"
_FULL_RETURN = "return 0.5 * (trace + quad - K + log_det_p - log_det_q)"
_FULL_LOG_DETS = ("log_det_p = 2 * torch.diagonal(L_p, dim1=-2, dim2=-1).log().sum(-1)  # log det Sigma_p\n"
                  "    log_det_q = 2 * torch.diagonal(L_q, dim1=-2, dim2=-1).log().sum(-1)")


def _vae(cell, old, new, check, *words, accepted="", also=(), why_also=""):
    return Mistake("vae_basics", cell, old, new, check, words, accepted, also, why_also)


def _gen(cell, old, new, check, *words, accepted="", also=(), why_also=""):
    return Mistake("dpm2_generative", cell, old, new, check, words, accepted, also, why_also)


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


def _inf(cell, old, new, check, *words, accepted="", also=(), why_also=""):
    return Mistake("dpm2_inference", cell, old, new, check, words, accepted, also, why_also)


_GAUSS_SCALES = "nn.Softplus(),\n            ReshapeLast(self.outcome_shape))"
_MOG_SCALES = "nn.Softplus(),\n            ReshapeLast(component_shape))"
_GAUSS_Q = ("return td.Independent(td.Normal(loc=self.locs(h), scale=self.scales(h)),\n"
            "                              len(self.outcome_shape))")
_DRL_RATE = ("kl = closed_form_kl(qz, pz)\n        R = kl if kl is not None else (log_qz - log_pz).mean(0)\n"
             "        # log")
_DRL_L = "L = torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(S)"
_SCORE = ("r, cv_loss = self.cv_model(reward.detach(), x=x, q=qz, r_fn=r_fn)\n"
          "            # the score term: its gradient is (r - b) grad log q(z|x), and it must not reach theta\n"
          "            surrogate = log_px_z.mean(0) + (r.detach() * log_qz).mean(0)")
_CENTRE = "self.r_mean.mul_(1.0 - self.alpha).add_(self.alpha * r.mean())"


def _is(cell, old, new, check, *words, accepted="", also=(), why_also=""):
    return Mistake("importance_sampling", cell, old, new, check, words, accepted, also, why_also)


_MARGINAL_COV = "cov = W @ W.T + sigma ** 2 * torch.eye(D, dtype=W.dtype, device=W.device)"
_POST_M = "M = W.T @ W + sigma ** 2 * torch.eye(K, dtype=W.dtype, device=W.device)"
_IWAE = "return torch.logsumexp(log_weights, dim=0) - math.log(S)"
_LW = "return joint.log_prob(z, x) - qz.log_prob(z)"
_ELBO = "return log_weights(x, qz, joint, num_samples).mean(dim=0)"
_LPE = "return iwae_bound(log_weights(x, qz, joint, num_samples))"
_EZ = "Ez = (X - b) @ W @ M_inv"
_EZZ = "Ezz = sigma ** 2 * M_inv + Ez.unsqueeze(-1) * Ez.unsqueeze(-2)"
_EM_M = "M = W.T @ W + sigma ** 2 * torch.eye(K, dtype=W.dtype, device=W.device)"
_MW = "W = Xc.T @ Ez @ torch.linalg.inv(Ezz.sum(dim=0))"


def _bey(cell, old, new, check, *words, accepted="", also=(), why_also=""):
    return Mistake("dpm2_beyond", cell, old, new, check, words, accepted, also, why_also)


_CB_RETURN = "return torch.where(small, taylor, exact)"
_CB_EXACT = "exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))"
_CB_BRANCHES = _CB_EXACT + "\n    taylor = math.log(2.0) + a.pow(2) / 12"
_CB_PIXEL = "per_pixel = x * logits - F.softplus(logits) + cb_log_normaliser(logits)"
_CB_SUM = "return per_pixel.sum(dim=(-3, -2, -1))"
_MIX_C = "c = qz.mixture_distribution.sample((num_samples,))"
_MIX_ALL = "z_all = qz.component_distribution.rsample((num_samples,))"
_MIX_Z = "z = z_all.gather(-2, index).squeeze(-2)"
_MIX_RETURN = "return z, qz.mixture_distribution.log_prob(c)"
_SUR_REWARD = "reward = (f - baseline).detach()"
_SUR_RETURN = "return (f + reward * log_w).mean(dim=0)"
_COUPLE_CALL = "return z * (kept * log_scale).exp() + kept * shift"
_COUPLE_CALL_G = "shift, log_scale = self.shift_log_scale(self.mask * z)\n        kept"
_COUPLE_INV = "return (y - kept * shift) * (-kept * log_scale).exp()"
_COUPLE_INV_G = "self.shift_log_scale(self.mask * y)"
_COUPLE_DET = "return ((1 - self.mask) * log_scale).sum(-1)"
_COUPLE_DET_G = "_, log_scale = self.shift_log_scale(self.mask * z)"


def _disc(cell, old, new, check, *words, accepted="", also=(), why_also=""):
    return Mistake("dpm3_discrete", cell, old, new, check, words, accepted, also, why_also)


_EN_BITS = "codes = index.to(inner.logits.dtype).reshape((-1,) + tuple(units))  # [N, K]"
_EN_HOT = "codes = F.one_hot(index, classes).to(inner.logits.dtype)  # [N, L, C]"
_EN_EXPAND = "codes = codes.expand((N,) + tuple(batch_shape) + event)  # [N, B, ...]"
_EN_RESHAPE = "codes = codes.reshape((N,) + (1,) * len(batch_shape) + event)"
_EN_CLASSES = "classes = 2 if isinstance(inner, td.Bernoulli) else inner.event_shape[0]"
_EN_TRANSFORMS = "for t in transforms:\n        codes = t(codes)"
_ELBO_Z = "z = enumerate_codes(qz)  # [N, B, K]"
_ELBO_LOG_Q = "log_q = qz.log_prob(z)  # [N, B]"
_ELBO_RETURN = "return (log_q.exp() * (joint.log_prob(z, x) - log_q)).sum(0)"
_LOO_BASELINE = "baseline = (r.sum(0, keepdim=True) - r) / (S - 1)  # [S, B]"
_LOO_RETURN = "return r - baseline, torch.zeros_like(r)"
_RELAX_BITS = "inner = td.RelaxedBernoulli(tau, logits=inner.logits)"
_RELAX_HOT = "inner = td.RelaxedOneHotCategorical(tau, logits=inner.logits)"
_RELAX_TAU = "tau = torch.tensor(temperature, dtype=inner.logits.dtype, device=inner.logits.device)"
_REBUILD = "return rebuild_code(inner, ndims, transforms)"
_ST_RETURN = "return hard + (probs - probs.detach())"
_ST_BITS = "inner = BernoulliStraightThrough(logits=inner.logits)"
_RL_DRAWS = "z = stand_in.rsample((S,))  # [S, B, K]"
_RL_RETURN = "return -(log_px_z.mean(0) - td.kl_divergence(qz, pz)).mean()"
_RL_STAND_IN = 'stand_in = relaxed(qz, temperature) if relaxation == "concrete" else straight_through(qz)'


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
    # vae_basics: the full-covariance KL, single Gaussians
    _vae("kl-full-solution", "K = mu_q.shape[-1]",
         "K = mu_q.shape[-1]\n    mu_q, L_q, mu_p, L_p = mu_p, L_p, mu_q, L_q",
         "kl-full-value-tests", "KL(p || q)"),
    _vae("kl-full-solution", _FULL_RETURN, "return 0.5 * (trace + quad + log_det_p - log_det_q)",
         "kl-full-value-tests", "-K term is missing"),
    _vae("kl-full-solution", _FULL_RETURN, "return trace + quad - K + log_det_p - log_det_q",
         "kl-full-value-tests", "factor 1/2"),
    _vae("kl-full-solution", _FULL_LOG_DETS, _FULL_LOG_DETS.replace("= 2 * torch", "= torch"),
         "kl-full-value-tests", "log-determinant of L"),
    _vae("kl-full-solution", _FULL_RETURN, "return 0.5 * (trace + quad - K - log_det_p + log_det_q)",
         "kl-full-value-tests", "wrong signs"),
    _vae("kl-full-solution", _FULL_M, "M = torch.linalg.solve_triangular(L_q, L_p, upper=False)",
         "kl-full-value-tests", "inverts the wrong matrix"),
    _vae("kl-full-solution", _FULL_M + "  # L_p^{-1} L_q, [..., K, K]\n    " + _FULL_Y,
         "M = torch.linalg.solve_triangular(L_p.mT, L_q, upper=True)\n    "
         "y = torch.linalg.solve_triangular(L_p.mT, (mu_p - mu_q).unsqueeze(-1), upper=True)",
         "kl-full-value-tests", "transposed"),
    _vae("kl-full-solution", _FULL_M + "  # L_p^{-1} L_q, [..., K, K]\n    " + _FULL_Y,
         "M = torch.linalg.solve_triangular(L_p, L_q, upper=True)\n    "
         "y = torch.linalg.solve_triangular(L_p, (mu_p - mu_q).unsqueeze(-1), upper=True)",
         "kl-full-value-tests", "upper=False"),
    _vae("kl-full-solution", "trace = M.pow(2).sum((-2, -1))",
         "trace = torch.diagonal(M, dim1=-2, dim2=-1).sum(-1)", "kl-full-value-tests",
         "Frobenius"),
    _vae("kl-full-solution", _FULL_RETURN, "return 0.5 * (trace - K + log_det_p - log_det_q)",
         "kl-full-value-tests", "quadratic form"),
    _vae("kl-full-solution", _FULL_RETURN, _FULL_RETURN.replace("return", "return (") + ").detach()",
         "kl-full-value-tests", "no gradient"),
    _vae("kl-full-solution", _FULL_Y,
         "y = torch.linalg.solve_triangular(L_p, (mu_p - mu_q).detach().unsqueeze(-1), upper=False)",
         "kl-full-value-tests", "gradient of KL_full with respect to mu_q"),
    # vae_basics: the full-covariance KL, batches and broadcasting
    _vae("kl-full-solution", _FULL_LOG_DETS,
         "log_det_p = 2 * torch.diagonal(L_p).log().sum(-1)\n"
         "    log_det_q = 2 * torch.diagonal(L_q).log().sum(-1)",
         "kl-full-batch-tests", "default dims"),
    _vae("kl-full-solution", "K = mu_q.shape[-1]", "K = mu_q.shape[0]", "kl-full-batch-tests",
         "mu.shape[0]"),
    _vae("kl-full-solution", "trace = M.pow(2).sum((-2, -1))", "trace = M.pow(2).sum()",
         "kl-full-batch-tests", "sum over a leading dimension"),
    _vae("kl-full-solution", "quad = y.pow(2).sum((-2, -1))", "quad = y.pow(2).sum((0, 1))",
         "kl-full-batch-tests", "KL_full"),
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
    _gen("gaussian-prior-solution", _NORMAL, "normal = td.Normal(loc=self.locs, scale=self.scales)",
         "gaussian-prior-tests", "batch_shape"),
    # dpm2_generative: the mixture prior
    _gen("mog-prior-solution", _MIXING,
         "mixing = td.Categorical(probs=self.logits.expand(batch_shape + (self.num_components,)))",
         "mog-prior-values-tests", "Categorical"),
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
    _gen("mog-prior-solution", _MIXING, "mixing = td.Categorical(logits=self.logits)",
         "mog-prior-shapes-tests", "Categorical should have batch_shape"),
    _gen("mog-prior-solution", "return F.softplus(self.raw_scales)", "return self.raw_scales.abs()",
         "mog-prior-parameters-tests", "positivity transform"),
    # dpm2_generative: the image models
    _gen("binarized-image-model-solution", _BERNOULLI,
         "return td.Independent(td.Bernoulli(probs=logits), len(self.outcome_shape))",
         "binarized-image-model-tests", "logits="),
    _gen("binarized-image-model-solution", _BERNOULLI, "return td.Bernoulli(logits=logits)",
         "binarized-image-model-tests", "td.Independent"),
    _gen("binarized-image-model-solution", _BERNOULLI,
         "return td.Independent(td.Bernoulli(logits=logits), 1)",
         "binarized-image-model-tests", "td.Independent"),
    _gen("binarized-image-model-solution", _BERNOULLI,
         "return td.Independent(td.Bernoulli(logits=torch.sigmoid(logits)), len(self.outcome_shape))",
         "binarized-image-model-tests", "logits="),
    _gen("continuous-image-model-solution", _CB,
         "return td.Independent(td.Bernoulli(logits=logits), len(self.outcome_shape))",
         "continuous-image-model-tests", "continuous Bernoulli"),
    _gen("continuous-image-model-solution", _CB,
         "return td.Independent(td.ContinuousBernoulli(probs=torch.sigmoid(logits).round()), 3)",
         "continuous-image-model-tests", "logits"),
    _gen("continuous-image-model-solution", _CB, "return td.ContinuousBernoulli(logits=logits)",
         "continuous-image-model-tests", "td.Independent"),
    _gen("continuous-image-model-solution", _CB,
         "return td.Independent(td.ContinuousBernoulli(probs=logits), len(self.outcome_shape))",
         "continuous-image-model-tests", "logits"),
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
    _gen("joint-distribution-solution", _MARGINAL, "return torch.logsumexp(log_joint, dim=-1)",
         "joint-log-marginal-tests", "N codes"),
    _gen("joint-distribution-solution", _POSTERIOR, "return td.Categorical(logits=log_joint)",
         "joint-posterior-tests", "last"),
    _gen("joint-distribution-solution", _POSTERIOR,
         "return td.Categorical(logits=self.obs_model(z).log_prob(x).movedim(0, -1))",
         "joint-posterior-tests", "proportional to p(z) p(x|z)"),
    _gen("joint-distribution-solution", _POSTERIOR,
         "return td.Categorical(logits=log_joint.transpose(0, -1))", "joint-posterior-tests",
         "movedim"),
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
    _gen("joint-distribution-solution", _NAIVE, "return self.obs_model(z).log_prob(x).mean(dim=-1)",
         "joint-naive-bound-tests", "dim 0"),
    # dpm2_inference: the CPD nets
    _inf("gaussian-cpd-solution", _GAUSS_SCALES, "ReshapeLast(self.outcome_shape))",
         "gaussian-cpd-tests", "softplus"),
    _inf("gaussian-cpd-solution", _GAUSS_Q,
         "return td.Independent(td.Normal(loc=self.locs(h), scale=self.scales(h)), 1)",
         "gaussian-cpd-tests", "td.Independent"),
    _inf("gaussian-cpd-solution", _GAUSS_Q, "return td.Normal(loc=self.locs(h), scale=self.scales(h))",
         "gaussian-cpd-tests", "td.Independent"),
    _inf("gaussian-cpd-solution", _GAUSS_Q,
         "return td.Independent(td.Normal(loc=self.locs(h), scale=self.scales(torch.zeros_like(h))),\n"
         "                              len(self.outcome_shape))",
         "gaussian-cpd-tests", "depend on the inputs"),
    _inf("mog-cpd-solution", _MOG_SCALES, "ReshapeLast(component_shape))", "mog-cpd-tests", "softplus"),
    _inf("mog-cpd-solution", "td.Categorical(logits=self.logits(h))",
         "td.Categorical(logits=self.logits(torch.zeros_like(h)))", "mog-cpd-tests", "mixing weights"),
    _inf("mog-cpd-solution", "len(self.outcome_shape))\n        return td.MixtureSameFamily",
         "1)\n        return td.MixtureSameFamily", "mog-cpd-tests", "td.Independent over all outcome dimensions"),
    # dpm2_inference: NVIL.DRL
    _inf("nvil-solution", _DRL_RATE, _DRL_RATE.replace("closed_form_kl(qz, pz)", "closed_form_kl(pz, qz)"),
         "nvil-drl-tests", "KL"),
    _inf("nvil-solution", _DRL_RATE, _DRL_RATE.replace("(log_qz - log_pz)", "(log_pz - log_qz)"),
         "nvil-drl-tests", "log q(z_s|x) - log p(z_s)"),
    _inf("nvil-solution", _DRL_L, "L = (log_px_z + log_pz - log_qz).mean(0)", "nvil-drl-tests", "L"),
    _inf("nvil-solution", _DRL_L, "L = torch.logsumexp(log_px_z + log_pz - log_qz, dim=0)",
         "nvil-drl-tests", "L"),
    _inf("nvil-solution", "D = -log_px_z.mean(0)\n        kl = closed_form_kl(qz, pz)\n",
         "D = log_px_z.mean(0)\n        kl = closed_form_kl(qz, pz)\n", "nvil-drl-tests", "D"),
    # dpm2_inference: NVIL.forward
    _inf("nvil-solution", "z = qz.rsample((S,)) if pathwise else qz.sample((S,))", "z = qz.sample((S,))",
         "nvil-pathwise-tests", "rsample"),
    _inf("nvil-solution", "surrogate = -D - rate_weight * R", "surrogate = -D - R",
         "nvil-forward-tests", "rate_weight"),
    _inf("nvil-solution", '"ELBO": (-D - R).mean().item()', '"ELBO": surrogate.mean().item()',
         "nvil-forward-tests", "surrogate"),
    _inf("nvil-solution", "raise ValueError(f\"estimator must be", "print(f\"estimator must be",
         "nvil-forward-tests", "unknown estimator"),
    _inf("nvil-solution",
         "log_qz, log_pz = qz.log_prob(z), pz.log_prob(z)  # [S, B]\n        kl = closed_form_kl(qz, pz)  # [B], or None",
         "log_qz, log_pz = qz.log_prob(z.detach()), pz.log_prob(z.detach())  # [S, B]\n"
         "        kl = closed_form_kl(qz, pz)  # [B], or None",
         "nvil-pathwise-tests", "biased"),
    _inf("nvil-solution", _SCORE,
         _SCORE.replace("reward.detach()", "reward").replace("r.detach() * log_qz", "r * log_qz"),
         "nvil-sfe-tests", "detach"),
    _inf("nvil-solution", "(-rate_weight * kl if kl is not None", "(rate_weight * kl if kl is not None",
         "nvil-cv-hookup-tests", "rate_weight * KL(q || p)"),
    _inf("nvil-solution",
         "reward = log_px_z if kl is not None else log_px_z - rate_weight * (log_qz - log_pz)",
         "reward = log_px_z", "nvil-cv-hookup-tests", "sampled rate"),
    _inf("nvil-solution", "loss = -surrogate.mean() + cv_loss.mean()", "loss = -surrogate.mean()",
         "nvil-cv-hookup-tests", "control variate's loss"),
    _inf("nvil-solution", "surrogate = log_px_z.mean(0) + (r.detach() * log_qz).mean(0)",
         "surrogate = log_px_z.mean(0) + (reward.detach() * log_qz).mean(0)",
         "nvil-cv-hookup-tests", "control variate's output"),
    # dpm2_inference: the control variates
    _inf("cv-running-solution", _CENTRE, "self.r_mean.mul_(self.alpha).add_((1.0 - self.alpha) * r.mean())",
         "cv-centred-tests", "alpha"),
    _inf("cv-running-solution", "centred = r - self.r_mean", "centred = r - r.mean()",
         "cv-centred-tests", "running"),
    _inf("cv-running-solution", ".clamp_(min=1.0)", "", "cv-scaled-tests", "floor it at 1"),
    _inf("cv-running-solution", "scaled = r / self.r_std", "scaled = r * self.r_std",
         "cv-scaled-tests", "divide"),
    _inf("cv-critic-solution", "baseline = r_fn(q.sample(sample_shape), x)", "baseline = r_fn(q.sample(), x)",
         "cv-selfcritic-tests", "fresh draw"),
    _inf("cv-critic-solution", "return r - baseline, torch.zeros_like(r)",
         "return baseline - r, torch.zeros_like(r)", "cv-selfcritic-tests", "r - r_fn"),
    _inf("cv-critic-solution", "return r - b.detach(), (r - b) ** 2", "return r - b, (r - b) ** 2",
         "cv-baseline-tests", "detach the baseline"),
    _inf("cv-critic-solution", "return r - b.detach(), (r - b) ** 2",
         "return r - b.detach(), (r - b.detach()) ** 2", "cv-baseline-tests", "no gradient to b"),
    _inf("cv-critic-solution", "return r - b.detach(), (r - b) ** 2",
         "return r - b.detach(), (r - b).abs()", "cv-baseline-tests", "(r - b(x)) ** 2"),
    _inf("cv-critic-solution", "loss = loss + extra", "loss = extra", "cv-chain-tests", "sum"),
    _inf("cv-critic-solution", "members = control_variates[0].items()",
         "members = ((str(i), cv) for i, cv in enumerate(control_variates[0].values()))",
         "cv-chain-tests", "keys"),
    # importance_sampling: PCA
    _is("pca-solution", "cov = Xc.T @ Xc / X.shape[0]", "cov = X.T @ X / X.shape[0]",
        "pca-basis-tests", "centre the data"),
    _is("pca-solution", "W = eigvecs.flip(-1)[:, :num_components]", "W = eigvecs[:, :num_components]",
        "pca-basis-tests", "SMALLEST"),
    _is("pca-solution", "W = eigvecs.flip(-1)[:, :num_components]",
        "W = eigvecs.flip(-1).T[:, :num_components]", "pca-basis-tests", "eigenvectors"),
    _is("pca-solution", "W = eigvecs.flip(-1)[:, :num_components]", "W = eigvecs[:, -num_components:]",
        "pca-basis-tests", "not sorted by decreasing eigenvalue"),
    _is("pca-solution", "return mean, W, Xc @ W", "return mean, W, X @ W", "pca-encoding-tests",
        "subtract the mean"),
    _is("pca-solution", "return mean, W, Xc @ W", "return mean, W, Xc @ W @ W.T", "pca-encoding-tests",
        "Z"),
    # importance_sampling: PPCA in closed form
    _is("ppca-solution", _MARGINAL_COV, _MARGINAL_COV.replace("sigma ** 2 *", "sigma *"),
        "ppca-marginal-tests", "sigma^2, not sigma"),
    _is("ppca-solution", _MARGINAL_COV, _MARGINAL_COV.replace("sigma ** 2 *", ""),
        "ppca-marginal-tests", "not W W^T + I"),
    _is("ppca-solution", _MARGINAL_COV, "cov = W @ W.T", "ppca-marginal-tests", "singular"),
    _is("ppca-solution", "return td.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)",
        "return td.Independent(td.Normal(b, cov.diagonal().sqrt()), 1).log_prob(x)",
        "ppca-marginal-tests", "only the diagonal"),
    _is("ppca-solution", "mean = (x - b) @ W @ M_inv", "mean = (x - b) @ W", "ppca-posterior-mean-tests",
        "left out M^{-1}"),
    _is("ppca-solution", "mean = (x - b) @ W @ M_inv", "mean = x @ W @ M_inv", "ppca-posterior-mean-tests",
        "subtract b"),
    _is("ppca-solution", _POST_M, "M = W.T @ W", "ppca-posterior-mean-tests", "left out sigma^2 I"),
    _is("ppca-solution", _POST_M, _POST_M.replace("sigma ** 2 *", "sigma *"), "ppca-posterior-mean-tests",
        "sigma squared"),
    _is("ppca-solution", "covariance_matrix=sigma ** 2 * M_inv)", "covariance_matrix=M_inv)",
        "ppca-posterior-cov-tests", "left out sigma^2"),
    _is("ppca-solution", "covariance_matrix=sigma ** 2 * M_inv)", "covariance_matrix=sigma * M_inv)",
        "ppca-posterior-cov-tests", "sigma squared"),
    _is("ppca-solution", "covariance_matrix=sigma ** 2 * M_inv)", "covariance_matrix=sigma ** 2 * M)",
        "ppca-posterior-cov-tests", "inverse of M"),
    _is("ppca-solution", "covariance_matrix=sigma ** 2 * M_inv)",
        "covariance_matrix=torch.diag_embed((sigma ** 2 * M_inv).diagonal()))",
        "ppca-posterior-cov-tests", "not diagonal"),
    # importance_sampling: EM for PPCA, the E-step
    _is("em-e-step-solution", _EZ, "Ez = X @ W @ M_inv", "em-e-step-mean-tests", "subtract b"),
    _is("em-e-step-solution", _EZ, "Ez = (X - b) @ W", "em-e-step-mean-tests", "left out M^{-1}"),
    _is("em-e-step-solution", _EM_M, _EM_M.replace("sigma ** 2 *", "sigma *"), "em-e-step-mean-tests",
        "sigma squared"),
    _is("em-e-step-solution", _EM_M, "M = W.T @ W", "em-e-step-mean-tests", "left out sigma^2 I"),
    _is("em-e-step-solution", _EZZ, "Ezz = Ez.unsqueeze(-1) * Ez.unsqueeze(-2)", "em-e-step-moment-tests",
        "left out the posterior covariance"),
    _is("em-e-step-solution", _EZZ, "Ezz = M_inv + Ez.unsqueeze(-1) * Ez.unsqueeze(-2)",
        "em-e-step-moment-tests", "left out sigma^2"),
    _is("em-e-step-solution", _EZZ, "Ezz = M_inv / sigma ** 2 + Ez.unsqueeze(-1) * Ez.unsqueeze(-2)",
        "em-e-step-moment-tests", "E[z_n z_n^T] = sigma^2 M^{-1}"),
    _is("em-e-step-solution", _EZZ, "Ezz = sigma ** 2 * M + Ez.unsqueeze(-1) * Ez.unsqueeze(-2)",
        "em-e-step-moment-tests", "inverse of M"),
    _is("em-e-step-solution", _EZZ, "Ezz = (sigma ** 2 * M_inv).expand(len(X), K, K)",
        "em-e-step-moment-tests", "outer product"),
    _is("em-e-step-solution", _EZZ, "Ezz = sigma ** 2 * M_inv + (Ez * Ez).sum(-1)[:, None, None]",
        "em-e-step-moment-tests", "E[z_n] E[z_n]^T"),
    _is("em-e-step-solution", _EZZ, "Ezz = sigma ** 2 * M_inv + Ez.T @ Ez", "em-e-step-moment-tests",
        "shape [K, K]"),
    # importance_sampling: EM for PPCA, the M-step
    _is("em-m-step-solution", _MW, "W = X.T @ Ez @ torch.linalg.inv(Ezz.sum(dim=0))", "em-m-step-w-tests",
        "subtract the mean"),
    _is("em-m-step-solution", _MW, "W = Xc.T @ Ez @ torch.linalg.inv(Ez.T @ Ez)", "em-m-step-w-tests",
        "posterior covariance"),
    _is("em-m-step-solution", _MW, "W = Xc.T @ Ez @ Ezz.sum(dim=0)", "em-m-step-w-tests", "INVERSE"),
    _is("em-m-step-solution", _MW, "W = Xc.T @ Ez @ torch.linalg.inv(Ezz.mean(dim=0))", "em-m-step-w-tests",
        "a sum and an average"),
    _is("em-m-step-solution", "return W, b, s2.sqrt()", "return W, b, s2", "em-m-step-sigma-tests",
        "square root"),
    _is("em-m-step-solution", "/ (N * D)", "/ N", "em-m-step-sigma-tests", "divide by N D"),
    _is("em-m-step-solution", "- 2 * (Ez * (Xc @ W)).sum()", "- (Ez * (Xc @ W)).sum()",
        "em-m-step-sigma-tests", "factor 2"),
    _is("em-m-step-solution", "(Ezz * (W.T @ W)).sum()", "((Ez @ W.T) ** 2).sum()", "em-m-step-sigma-tests",
        "E[z z^T]"),
    _is("em-m-step-solution", "s2 = ((Xc ** 2).sum() - 2 * (Ez * (Xc @ W)).sum()",
        "s2 = ((X ** 2).sum() - 2 * (Ez * (X @ W)).sum()", "em-m-step-sigma-tests", "subtract the mean b"),
    # importance_sampling: the IWAE bound
    _is("iwae-bound-solution", _IWAE, "return torch.logsumexp(log_weights, dim=0)", "iwae-bound-tests",
        "subtract log S"),
    _is("iwae-bound-solution", _IWAE, "return log_weights.mean(0)", "iwae-bound-tests",
        "averages the log-weights"),
    _is("iwae-bound-solution", _IWAE, "return torch.logsumexp(log_weights, dim=-1) - math.log(S)",
        "iwae-bound-tests", "iwae_bound"),
    _is("iwae-bound-solution", _IWAE, "return torch.log(torch.exp(log_weights).mean(0))",
        "iwae-stability-tests", "logsumexp"),
    # importance_sampling: the estimators
    _is("estimators-solution", "z = qz.rsample((num_samples,))", "z = qz.sample((num_samples,))",
        "log-weights-tests", "rsample"),
    _is("estimators-solution", _LW, "return qz.log_prob(z) - joint.log_prob(z, x)", "log-weights-tests",
        "wrong sign"),
    _is("estimators-solution", _LW, "return joint.log_prob(z, x)", "log-weights-tests", "log p(x)"),
    _is("estimators-solution", _ELBO, "return iwae_bound(log_weights(x, qz, joint, num_samples))",
        "elbo-estimate-tests", "ELBO"),
    _is("estimators-solution", _ELBO, "return log_weights(x, qz, joint, num_samples).sum(dim=0)",
        "elbo-estimate-tests", "ELBO"),
    _is("estimators-solution", _LPE, "return log_weights(x, qz, joint, num_samples).mean(0)",
        "log-prob-estimate-tests", "average the log-weights"),
    _is("estimators-solution", _LPE, "return iwae_bound(log_weights(x, qz, joint, 1))",
        "log-prob-estimate-tests", "grows too little with S"),
    # importance_sampling: per-datapoint inference
    _is("per-datapoint-solution", "loss = -elbo_estimate(", "loss = elbo_estimate(", "per-datapoint-tests",
        "minimise the ELBO"),
    _is("per-datapoint-solution", "td.Normal(loc.detach(), F.softplus(raw_scale).detach())",
        "td.Normal(loc.detach(), raw_scale.detach().abs())", "per-datapoint-tests", "returned scales"),
    _is("per-datapoint-solution", "return td.Independent(td.Normal(loc.detach(),",
        "return td.Independent(td.Normal(loc,", "per-datapoint-tests", "detach"),
    _is("per-datapoint-solution", "for _ in range(num_steps):", "for _ in range(num_steps // 50):",
        "per-datapoint-tests", "nats below log p(x)"),
    # dpm2_beyond: the continuous Bernoulli's normaliser, its values
    _bey("cb-normaliser-solution", _CB_RETURN, "return -torch.where(small, taylor, exact)",
         "cb-normaliser-values-tests", "sign is flipped"),
    _bey("cb-normaliser-solution", _CB_BRANCHES,
         "exact = torch.log(safe) - torch.log(torch.tanh(safe / 2)) - math.log(2.0)\n"
         "    taylor = a.pow(2) / 12", "cb-normaliser-values-tests", "factor 2"),
    _bey("cb-normaliser-solution", _CB_RETURN, "return torch.where(small, taylor, exact).exp()",
         "cb-normaliser-values-tests", "C(lambda) itself"),
    _bey("cb-normaliser-solution", "a = logits.abs()", "a = logits",
         "cb-normaliser-values-tests", "negative logits"),
    _bey("cb-normaliser-solution", "small = a < 1e-2", "small = a < 1.0",
         "cb-normaliser-values-tests", "Taylor expansion"),
    _bey("cb-normaliser-solution", _CB_EXACT,
         "exact = torch.log(torch.sigmoid(safe) / torch.tanh(torch.sigmoid(safe) / 2))",
         "cb-normaliser-values-tests", "evaluated at lambda = sigmoid"),
    # dpm2_beyond: the normaliser's stability
    _bey("cb-normaliser-solution", _CB_RETURN, "return torch.log(logits / torch.tanh(logits / 2))",
         "cb-normaliser-stability-tests", "0/0", "Taylor expansion"),
    _bey("cb-normaliser-solution", "safe = torch.where(small, torch.ones_like(a), a)", "safe = a",
         "cb-normaliser-stability-tests", "gradient", "torch.where"),
    _bey("cb-normaliser-solution", _CB_EXACT,
         "lam = torch.sigmoid(safe)\n    exact = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))",
         "cb-normaliser-stability-tests", "sigmoid(20) rounds to 1"),
    _bey("cb-normaliser-solution", _CB_EXACT,
         "lam = torch.sigmoid(safe).clamp(1e-7, 1 - 1e-7)\n"
         "    exact = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))",
         "cb-normaliser-stability-tests", "clamps lambda"),
    _bey("cb-normaliser-solution", "a.pow(2) / 12", "a.pow(2) / 6",
         "cb-normaliser-stability-tests", "Taylor branch"),
    _bey("cb-normaliser-solution", "taylor = math.log(2.0) + a.pow(2) / 12",
         "taylor = torch.full_like(a, math.log(2.0))", "cb-normaliser-stability-tests", "l / 6"),
    _bey("cb-normaliser-solution", _CB_RETURN, "return torch.where(small, taylor, exact).detach()",
         "cb-normaliser-stability-tests", "no gradient"),
    _bey("cb-normaliser-solution", _CB_EXACT,
         "exact = torch.log(safe.detach()) - torch.log(torch.tanh(safe.detach() / 2))",
         "cb-normaliser-stability-tests", "detached"),
    # dpm2_beyond: the log-density of an image
    _bey("cb-log-prob-solution", _CB_PIXEL, "per_pixel = x * logits - F.softplus(logits)",
         "cb-log-prob-tests", "without the normaliser"),
    _bey("cb-log-prob-solution", _CB_PIXEL,
         "per_pixel = x * logits - F.softplus(logits) - cb_log_normaliser(logits)",
         "cb-log-prob-tests", "wrong sign"),
    _bey("cb-log-prob-solution", _CB_PIXEL,
         "per_pixel = (1 - x) * logits - F.softplus(logits) + cb_log_normaliser(logits)",
         "cb-log-prob-tests", "swapped"),
    _bey("cb-log-prob-solution", _CB_PIXEL,
         "per_pixel = x * logits - F.softplus(logits) + cb_log_normaliser(torch.sigmoid(logits))",
         "cb-log-prob-tests", "takes the logits"),
    _bey("cb-log-prob-solution", _CB_PIXEL,
         "lam = torch.sigmoid(logits)\n    per_pixel = x * torch.log(lam) + (1 - x) * torch.log(1 - lam)"
         " + cb_log_normaliser(logits)", "cb-log-prob-tests", "softplus"),
    _bey("cb-log-prob-solution", _CB_SUM, "return per_pixel", "cb-log-prob-tests", "one value per pixel"),
    _bey("cb-log-prob-solution", _CB_SUM, "return per_pixel.sum(-1)", "cb-log-prob-tests",
         "last three dimensions"),
    _bey("cb-log-prob-solution", _CB_SUM, "return per_pixel.sum()", "cb-log-prob-tests",
         "do not sum over the batch"),
    _bey("cb-log-prob-solution", _CB_SUM, "return per_pixel.sum(dim=(1, 2, 3))", "cb-log-prob-tests",
         "last three dimensions"),
    _bey("cb-log-prob-solution", _CB_SUM, "return per_pixel.mean(dim=(-3, -2, -1))",
         "cb-log-prob-tests", "mean over the pixels"),
    _bey("cb-log-prob-solution", _CB_SUM, "return per_pixel.sum(dim=(-3, -2, -1)).detach()",
         "cb-log-prob-tests", "no gradient"),
    # dpm2_beyond: the mixture estimator's draws
    _bey("mixture-rsample-solution", "return z, ", "return z_all, ",
         "mixture-rsample-draws-tests", "a draw from every component"),
    _bey("mixture-rsample-solution", _MIX_C,
         "c = qz.mixture_distribution.probs.argmax(-1).expand(num_samples, *qz.batch_shape)",
         "mixture-rsample-draws-tests", "frequencies", "not the heaviest"),
    _bey("mixture-rsample-solution", _MIX_C,
         "c = qz.mixture_distribution.sample().expand(num_samples, *qz.batch_shape)",
         "mixture-rsample-draws-tests", "frequencies"),
    _bey("mixture-rsample-solution", _MIX_Z,
         "z = (qz.mixture_distribution.probs[..., None] * z_all).sum(-2)",
         "mixture-rsample-draws-tests", "average of the components",
         also=("mixture-rsample-gradients-tests",),
         why_also="an average of the components is neither a draw of the mixture nor "
                  "independent of the mixing weights: both the draws and their gradients are "
                  "wrong"),
    _bey("mixture-rsample-solution", _MIX_RETURN, "return z, qz.mixture_distribution.log_prob(c).exp()",
         "mixture-rsample-draws-tests", "weights w_c themselves"),
    _bey("mixture-rsample-solution", _MIX_RETURN,
         "return z, qz.mixture_distribution.log_prob(qz.mixture_distribution.sample((num_samples,)))",
         "mixture-rsample-draws-tests", "same c"),
    _bey("mixture-rsample-solution", _MIX_RETURN,
         "return z, torch.log_softmax(qz.mixture_distribution.logits, -1).expand(num_samples, "
         "*qz.mixture_distribution.logits.shape)",
         "mixture-rsample-draws-tests", "log-weights of all components"),
    _bey("mixture-rsample-solution", _MIX_ALL,
         "z_all = qz.component_distribution.sample((num_samples,)) * 0 + "
         "qz.component_distribution.mean.expand(num_samples, *qz.component_distribution.mean.shape)",
         "mixture-rsample-draws-tests", "variance", also=("mixture-rsample-gradients-tests",),
         why_also="draws without noise ignore the scales: their spread is wrong, and the scales "
                  "get no gradient"),
    # dpm2_beyond: their gradients
    _bey("mixture-rsample-solution", _MIX_ALL,
         "z_all = qz.component_distribution.sample((num_samples,))",
         "mixture-rsample-gradients-tests", "has no gradient"),
    _bey("mixture-rsample-solution", _MIX_RETURN, "return z, qz.mixture_distribution.log_prob(c).detach()",
         "mixture-rsample-gradients-tests", "log_w", "no gradient"),
    _bey("mixture-rsample-solution", _MIX_Z, "z = z_all.detach().gather(-2, index).squeeze(-2)",
         "mixture-rsample-gradients-tests", "has no gradient"),
    # dpm2_beyond: the surrogate
    _bey("mixture-surrogate-solution", _SUR_REWARD, "reward = f - baseline",
         "mixture-surrogate-tests", "biased", "must be detached"),
    _bey("mixture-surrogate-solution", _SUR_RETURN, "return (f.detach() + reward * log_w).mean(dim=0)",
         "mixture-surrogate-tests", "locations and scales get no gradient"),
    _bey("mixture-surrogate-solution", _SUR_RETURN, "return (f + reward * log_w.detach()).mean(dim=0)",
         "mixture-surrogate-tests", "mixing logits get no gradient"),
    _bey("mixture-surrogate-solution", _SUR_RETURN, "return f.mean(dim=0)",
         "mixture-surrogate-tests", "mixing logits get no gradient"),
    _bey("mixture-surrogate-solution", _SUR_RETURN, "return (f - reward * log_w).mean(dim=0)",
         "mixture-surrogate-tests", "wrong sign"),
    _bey("mixture-surrogate-solution", _SUR_REWARD, "reward = f.detach()",
         "mixture-surrogate-tests", "Subtract the baseline"),
    _bey("mixture-surrogate-solution", _SUR_REWARD, "reward = (f + baseline).detach()",
         "mixture-surrogate-tests", "Subtract the baseline"),
    _bey("mixture-surrogate-solution", _SUR_REWARD, "reward = f.detach() - baseline",
         "mixture-surrogate-tests", "must not be differentiated"),
    _bey("mixture-surrogate-solution", _SUR_RETURN, "return (f + reward * log_w).mean()",
         "mixture-surrogate-tests", "one number for all"),
    _bey("mixture-surrogate-solution", _SUR_RETURN, "return (f + reward * log_w).sum(dim=0)",
         "mixture-surrogate-tests", "average over the draws"),
    _bey("mixture-surrogate-solution", _SUR_RETURN, "return f + reward * log_w",
         "mixture-surrogate-tests", "one value per draw"),
    # dpm2_beyond: the affine coupling, forward and inverse
    _bey("coupling-solution", _COUPLE_CALL_G,
         "shift, log_scale = self.shift_log_scale(z)\n        kept",
         "coupling-inverse-tests", "g reads z itself"),
    _bey("coupling-solution", _COUPLE_CALL, "return z * log_scale.exp() + shift",
         "coupling-inverse-tests", "mask 1 changed"),
    _bey("coupling-solution", _COUPLE_CALL, "return z * (-kept * log_scale).exp() + kept * shift",
         "coupling-inverse-tests", "not exp(-s)"),
    _bey("coupling-solution", _COUPLE_CALL, "return (z + kept * shift) * (kept * log_scale).exp()",
         "coupling-inverse-tests", "scale first"),
    _bey("coupling-solution", _COUPLE_INV, "return (y - kept * shift) * (kept * log_scale).exp()",
         "coupling-inverse-tests", "exp(-s)"),
    _bey("coupling-solution", _COUPLE_INV, "return y * (-kept * log_scale).exp() - kept * shift",
         "coupling-inverse-tests", "undo the shift first"),
    _bey("coupling-solution", _COUPLE_INV_G, "self.shift_log_scale(y)",
         "coupling-inverse-tests", "from m * y"),
    _bey("coupling-solution", _COUPLE_INV, "return (y - shift) * (-log_scale).exp()",
         "coupling-inverse-tests", "from m * y"),
    # dpm2_beyond: its log-determinant
    _bey("coupling-solution", _COUPLE_DET, "return (1 - self.mask) * log_scale",
         "coupling-log-det-tests", "one value per coordinate"),
    _bey("coupling-solution", _COUPLE_DET, "return -((1 - self.mask) * log_scale).sum(-1)",
         "coupling-log-det-tests", "minus log |det dy/dz|"),
    _bey("coupling-solution", _COUPLE_DET, "return log_scale.sum(-1)",
         "coupling-log-det-tests", "mask 1"),
    _bey("coupling-solution", _COUPLE_DET, "return ((1 - self.mask) * log_scale).sum()",
         "coupling-log-det-tests", "One number per vector"),
    _bey("coupling-solution", _COUPLE_DET, "return ((1 - self.mask) * log_scale).exp().prod(-1)",
         "coupling-log-det-tests", "sum_k s_k"),
    _bey("coupling-solution", _COUPLE_DET_G, "_, log_scale = self.shift_log_scale(z)",
         "coupling-log-det-tests", "g(m * z)"),
    # dpm3_discrete: enumerating bits
    _disc("enumerate-solution", _EN_EXPAND, "pass  # forgot to repeat the codes over the batch",
          "enumerate-binary-tests", "batch_shape"),
    _disc("enumerate-solution", _EN_RESHAPE + "\n    " + _EN_EXPAND,
          "codes = codes.reshape((1,) * len(batch_shape) + (N,) + event)\n"
          "    codes = codes.expand(tuple(batch_shape) + (N,) + event)",
          "enumerate-binary-tests", "in front"),
    _disc("enumerate-solution", _EN_BITS,
          "codes = index.reshape((-1,) + tuple(units))  # [N, K]",
          "enumerate-binary-tests", "dtype"),
    _disc("enumerate-solution", _EN_BITS,
          "codes = ((torch.arange(2 ** n, device=values.device)[:, None] >> torch.arange(1, n + 1, "
          "device=values.device)) & 1).to(inner.logits.dtype).reshape((-1,) + tuple(units))",
          "enumerate-binary-tests", "twice"),
    _disc("enumerate-solution", _EN_BITS,
          "codes = (2 * index - 1).to(inner.logits.dtype).reshape((-1,) + tuple(units))  # [N, K]",
          "enumerate-binary-tests", "other than 0 and 1"),
    # dpm3_discrete: enumerating one-hot codes
    _disc("enumerate-solution", _EN_TRANSFORMS, "pass  # the transforms are for distributions",
          "enumerate-one-hot-tests", "FlattenCode"),
    _disc("enumerate-solution", _EN_CLASSES, "classes = 2", "enumerate-one-hot-tests",
          "not 2"),
    _disc("enumerate-solution", _EN_HOT, "codes = F.one_hot(index, classes)  # [N, L, C]",
          "enumerate-one-hot-tests", "dtype"),
    _disc("enumerate-solution", _EN_HOT,
          "codes = F.one_hot(index, classes).cumsum(-1).to(inner.logits.dtype)  # [N, L, C]",
          "enumerate-one-hot-tests", "one-hot"),
    # dpm3_discrete: the exact ELBO's values
    _disc("exact-elbo-solution", _ELBO_RETURN, "return (log_q.exp() * joint.log_prob(z, x)).sum(0)",
          "exact-elbo-values-tests", "entropy"),
    _disc("exact-elbo-solution", _ELBO_RETURN, "return (joint.log_prob(z, x) - log_q).sum(0)",
          "exact-elbo-values-tests", "not weighted by q"),
    _disc("exact-elbo-solution", _ELBO_RETURN, "return (joint.log_prob(z, x) - log_q).mean(0)",
          "exact-elbo-values-tests", "mean over the codes"),
    _disc("exact-elbo-solution", _ELBO_RETURN,
          "return (log_q * (joint.log_prob(z, x) - log_q)).sum(0)",
          "exact-elbo-values-tests", "weights are log q"),
    _disc("exact-elbo-solution", _ELBO_RETURN, "return torch.logsumexp(joint.log_prob(z, x), 0)",
          "exact-elbo-values-tests", "log p(x) itself"),
    _disc("exact-elbo-solution", _ELBO_RETURN,
          "return (log_q.exp() * (joint.log_prob(z, x) - log_q)).sum(-1)",
          "exact-elbo-values-tests", "dimension 0"),
    _disc("exact-elbo-solution", _ELBO_Z + "\n    " + _ELBO_LOG_Q + "\n    " + _ELBO_RETURN,
          "z = qz.sample((1000,))  # [S, B, K]\n    log_q = qz.log_prob(z)  # [S, B]\n"
          "    return (joint.log_prob(z, x) - log_q).mean(0)",
          "exact-elbo-values-tests", "do not sample"),
    # dpm3_discrete: the exact ELBO's gradient
    _disc("exact-elbo-solution", _ELBO_RETURN,
          "return (log_q.exp().detach() * (joint.log_prob(z, x) - log_q)).sum(0)",
          "exact-elbo-gradient-tests", "q(z|x).detach()"),
    _disc("exact-elbo-solution", _ELBO_LOG_Q, "log_q = qz.log_prob(z).detach()  # [N, B]",
          "exact-elbo-gradient-tests", "does not reach the parameters of q(z|x)"),
    _disc("exact-elbo-solution", _ELBO_RETURN,
          "return (log_q.exp() * (joint.log_prob(z, x).detach() - log_q)).sum(0)",
          "exact-elbo-gradient-tests", "p(z) p(x|z)"),
    # dpm3_discrete: the leave-one-out baseline
    _disc("leave-one-out-solution", _LOO_BASELINE, "baseline = r.mean(0, keepdim=True)  # [S, B]",
          "leave-one-out-tests", "own one included"),
    _disc("leave-one-out-solution", _LOO_BASELINE,
          "baseline = (r.sum(0, keepdim=True) - r) / S  # [S, B]",
          "leave-one-out-tests", "divides by S"),
    _disc("leave-one-out-solution", _LOO_BASELINE,
          "baseline = (r.sum(1, keepdim=True) - r) / (r.shape[1] - 1)  # [S, B]",
          "leave-one-out-tests", "batch dimension"),
    _disc("leave-one-out-solution", _LOO_RETURN, "return baseline - r, torch.zeros_like(r)",
          "leave-one-out-tests", "sign"),
    _disc("leave-one-out-solution", _LOO_RETURN, "return baseline, torch.zeros_like(r)",
          "leave-one-out-tests", "baseline b itself"),
    _disc("leave-one-out-solution", _LOO_RETURN, "return r - baseline, torch.zeros(())",
          "leave-one-out-tests", "zeros of the shape of r"),
    _disc("leave-one-out-solution", "if r.dim() < 1 or r.shape[0] < 2:", "if r.dim() < 1:",
          "leave-one-out-tests", "ValueError"),
    _disc("leave-one-out-solution", "raise ValueError(", "raise RuntimeError(",
          "leave-one-out-tests", "ValueError"),
    # dpm3_discrete: the Concrete relaxation
    _disc("concrete-solution", _RELAX_BITS, "inner = td.RelaxedBernoulli(tau, logits=inner.probs)",
          "concrete-tests", "probabilities are passed as logits"),
    _disc("concrete-solution", _RELAX_TAU,
          "tau = torch.tensor(1 / temperature, dtype=inner.logits.dtype, device=inner.logits.device)",
          "concrete-tests", "inverted"),
    _disc("concrete-solution", _RELAX_HOT, "inner = td.RelaxedBernoulli(tau, logits=inner.logits)",
          "concrete-tests", "RelaxedOneHotCategorical"),
    _disc("concrete-solution", _REBUILD, "return rebuild_code(inner, ndims, [])",
          "concrete-tests", "event_shape", "transforms"),
    _disc("concrete-solution", _REBUILD, "return rebuild_code(inner, 0, transforms)",
          "concrete-tests", "td.Independent"),
    _disc("concrete-solution", _RELAX_BITS, "inner = inner  # a Bernoulli is already in [0, 1]",
          "concrete-tests", "no rsample"),
    # dpm3_discrete: straight-through, its values
    _disc("straight-through-solution", _ST_RETURN, "return probs.expand(hard.shape) + 0 * hard",
          "straight-through-values-tests", "not hard codes"),
    _disc("straight-through-solution", _ST_BITS,
          "inner = BernoulliStraightThrough(logits=inner.probs)",
          "straight-through-values-tests", "probabilities are passed as logits"),
    _disc("straight-through-solution", _REBUILD, "return rebuild_code(inner, ndims, [])",
          "straight-through-values-tests", "rebuild_code"),
    # dpm3_discrete: straight-through, its gradient
    _disc("straight-through-solution", _ST_RETURN, "return hard",
          "straight-through-gradient-tests", "no gradient"),
    _disc("straight-through-solution", _ST_RETURN, "return hard - (probs - probs.detach())",
          "straight-through-gradient-tests", "sign is flipped"),
    _disc("straight-through-solution", "probs = self.probs", "probs = self.logits",
          "straight-through-gradient-tests", "logits themselves"),
    # dpm3_discrete: the relaxed surrogate loss
    _disc("relaxed-loss-solution", _RL_RETURN, "return -log_px_z.mean(0).mean()",
          "relaxed-loss-tests", "KL term is missing"),
    _disc("relaxed-loss-solution", _RL_RETURN,
          "return -(log_px_z.mean(0) + td.kl_divergence(qz, pz)).mean()",
          "relaxed-loss-tests", "wrong sign"),
    _disc("relaxed-loss-solution", _RL_RETURN,
          "return -(log_px_z.sum(0) - td.kl_divergence(qz, pz)).mean()",
          "relaxed-loss-tests", "summed over the S draws"),
    _disc("relaxed-loss-solution", _RL_RETURN,
          "return -(log_px_z.mean(0) - td.kl_divergence(qz, pz)).sum()",
          "relaxed-loss-tests", "summed over the batch"),
    _disc("relaxed-loss-solution", _RL_DRAWS, "z = stand_in.sample((S,))  # [S, B, K]",
          "relaxed-loss-tests", "rsample"),
    _disc("relaxed-loss-solution", _RL_STAND_IN,
          'stand_in = relaxed(qz, 1.0) if relaxation == "concrete" else straight_through(qz)',
          "relaxed-loss-tests", "temperature"),
    _disc("relaxed-loss-solution", _RL_STAND_IN,
          'stand_in = relaxed(pz, temperature) if relaxation == "concrete" else straight_through(qz)',
          "relaxed-loss-tests", "not the prior"),
    _disc("relaxed-loss-solution", _RL_STAND_IN,
          'stand_in = relaxed(qz, temperature) if relaxation != "straight_through" else '
          'straight_through(qz)', "relaxed-loss-tests", "never calls straight_through"),
]
