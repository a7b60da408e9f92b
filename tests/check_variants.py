"""Valid solutions written differently from the reference, for ``tests/test_checks.py``.

Each variant changes one solution cell (``old`` -> ``new``); every check of the assignment
must still pass.
"""

from typing import NamedTuple


class Variant(NamedTuple):
    """One correct solution written another way."""

    assignment: str
    cell: str
    old: str
    new: str
    description: str


VARIANTS = [
    Variant("vae_basics", "kl-solution", "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)",
            "td.kl_divergence(td.Normal(mu, (0.5 * logvar).exp()), "
            "td.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)",
            "KL with td.kl_divergence of two td.Normal"),
    Variant("vae_basics", "kl-solution", "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)",
            "sum(0.5 * (logvar[..., k].exp() + mu[..., k] ** 2 - 1 - logvar[..., k]) "
            "for k in range(mu.shape[-1]))",
            "KL as a loop over the latent coordinates"),
    Variant("vae_basics", "kl-solution", "0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)",
            "-0.5 * torch.sum(1 + logvar - mu ** 2 - torch.exp(logvar), dim=-1)",
            "KL as written in Kingma and Welling's appendix B"),
    Variant("vae_basics", "kl-full-solution", "return 0.5 * (trace + quad - K + log_det_p - log_det_q)",
            "return td.kl_divergence(td.MultivariateNormal(mu_q, scale_tril=L_q), "
            "td.MultivariateNormal(mu_p, scale_tril=L_p))",
            "KL_full with td.kl_divergence of two MultivariateNormal(scale_tril=...)"),
    Variant("vae_basics", "kl-full-solution", "return 0.5 * (trace + quad - K + log_det_p - log_det_q)",
            "S_q, S_p = L_q @ L_q.mT, L_p @ L_p.mT\n"
            "    S_p_inv = torch.linalg.inv(S_p)\n"
            "    d = (mu_p - mu_q).unsqueeze(-1)\n"
            "    tr = (S_p_inv @ S_q).diagonal(dim1=-2, dim2=-1).sum(-1)\n"
            "    return 0.5 * (tr + (d.mT @ S_p_inv @ d)[..., 0, 0] - K + torch.logdet(S_p) - torch.logdet(S_q))",
            "KL_full with explicit covariances, an inverse and logdet"),
    Variant("vae_basics", "kl-full-solution", "return 0.5 * (trace + quad - K + log_det_p - log_det_q)",
            "S_q = L_q @ L_q.mT\n"
            "    d = (mu_p - mu_q).unsqueeze(-1)\n"
            "    tr = torch.cholesky_solve(S_q, L_p).diagonal(dim1=-2, dim2=-1).sum(-1)\n"
            "    qf = (d * torch.cholesky_solve(d, L_p)).sum((-2, -1))\n"
            "    return 0.5 * (tr + qf - K + log_det_p - log_det_q)",
            "KL_full with torch.cholesky_solve"),
    Variant("vae_basics", "reparametrise-solution", "return mu + eps * torch.exp(0.5 * logvar)",
            "return td.Normal(mu, torch.exp(0.5 * logvar)).rsample()",
            "reparametrise with td.Normal.rsample"),
    Variant("vae_basics", "reparametrise-solution", "return mu + eps * torch.exp(0.5 * logvar)",
            "return torch.addcmul(mu, eps, logvar.exp().sqrt())",
            "reparametrise with sqrt(exp(logvar)) and addcmul"),
    Variant("vae_basics", "loss-solution", "return (nll + KL(mu, logvar)).mean()",
            "return (-td.Independent(td.Bernoulli(probs=recon_x), 1).log_prob(x) + KL(mu, logvar)).mean()",
            "loss with the td.Bernoulli log-likelihood"),
    Variant("vae_basics", "loss-solution", "return (nll + KL(mu, logvar)).mean()",
            'return (F.binary_cross_entropy(recon_x, x, reduction="sum") + KL(mu, logvar).sum()) / x.shape[0]',
            "loss as batch sums divided by the batch size"),
    Variant("dpm2_generative", "mog-prior-solution", "return F.softplus(self.raw_scales)",
            "return self.raw_scales.exp()", "mixture prior scales with exp instead of softplus"),
    Variant("dpm2_generative", "binarized-image-model-solution",
            "return td.Independent(td.Bernoulli(logits=logits), len(self.outcome_shape))",
            "return td.Independent(td.Bernoulli(probs=torch.sigmoid(logits)), 3)",
            "Bernoulli from probabilities, sigmoid of the logits"),
    Variant("dpm2_generative", "joint-distribution-solution",
            "return td.Categorical(logits=log_joint.movedim(0, -1))  # batch_shape + [N]",
            "return td.Categorical(probs=(log_joint - torch.logsumexp(log_joint, 0)).exp().movedim(0, -1))",
            "posterior from normalised probabilities"),
    Variant("dpm2_generative", "joint-distribution-solution",
            "return torch.logsumexp(log_joint, dim=0)",
            "m = log_joint.max(0).values\n        return m + torch.log(torch.exp(log_joint - m).sum(0))",
            "log_marginal with a hand-written stable log-sum-exp"),
    Variant("dpm2_generative", "gaussian-prior-solution",
            "normal = td.Normal(loc=self.locs.expand(shape), scale=self.scales.expand(shape))\n"
            "        return td.Independent(normal, len(self.outcome_shape))",
            "prior = td.Independent(td.Normal(self.locs, self.scales), len(self.outcome_shape))\n"
            "        return prior.expand(tuple(batch_shape))",
            "Gaussian prior built for one code, then expanded as a distribution"),
    Variant("dpm2_generative", "mog-prior-solution",
            "        comp_shape = batch_shape + (self.num_components,) + self.outcome_shape  # [B, C, K]\n"
            "        components = td.Independent(\n"
            "            td.Normal(loc=self.locs.expand(comp_shape), scale=self.scales.expand(comp_shape)),\n"
            "            len(self.outcome_shape))\n"
            "        mixing = td.Categorical(logits=self.logits.expand(batch_shape + (self.num_components,)))\n"
            "        return td.MixtureSameFamily(mixing, components)",
            "        mixture = td.MixtureSameFamily(\n"
            "            td.Categorical(logits=self.logits),\n"
            "            td.Independent(td.Normal(self.locs, self.scales), len(self.outcome_shape)))\n"
            "        return mixture.expand(batch_shape)",
            "mixture prior built for one code, then expanded as a distribution"),
    Variant("dpm2_generative", "mog-prior-solution",
            "self.raw_scales = nn.Parameter(torch.full(shape, math.log(math.e - 1.0)))",
            "self.raw_scales = nn.Parameter(torch.zeros(shape))",
            "mixture prior's raw scales initialised at zero"),
    Variant("dpm2_generative", "joint-distribution-solution",
            "return self.obs_model(z).log_prob(x).mean(dim=0)  # batch_shape",
            "return torch.stack([self.obs_model(pz.sample()).log_prob(x)\n"
            "                            for _ in range(num_samples)]).mean(0)",
            "naive bound with a Python loop over the samples"),
    Variant("dpm2_generative", "joint-distribution-solution",
            "return td.Categorical(logits=log_joint.movedim(0, -1))  # batch_shape + [N]",
            "return td.Categorical(logits=log_joint.permute(*range(1, log_joint.dim()), 0))",
            "posterior with the support dimension moved last by permute"),
    Variant("dpm2_inference", "cv-running-solution",
            "self.r_mean.mul_(1.0 - self.alpha).add_(self.alpha * r.mean())",
            "self.r_mean.lerp_(r.mean(), self.alpha)", "CentredReward's update with lerp_"),
    Variant("dpm2_inference", "cv-critic-solution", "return r - b.detach(), (r - b) ** 2",
            "return r - b.detach(), (b - r).pow(2)", "Baseline's loss written (b - r)^2"),
    Variant("dpm2_inference", "gaussian-cpd-solution",
            "return td.Independent(td.Normal(loc=self.locs(h), scale=self.scales(h)),\n"
            "                              len(self.outcome_shape))",
            "return td.Independent(td.Normal(self.locs(h), self.scales(h)),\n"
            "                              reinterpreted_batch_ndims=len(self.outcome_shape))",
            "GaussianCPDNet with positional Normal arguments"),
    Variant("importance_sampling", "pca-solution",
            "_, eigvecs = torch.linalg.eigh(cov)  # eigenvalues ascending\n"
            "    W = eigvecs.flip(-1)[:, :num_components]  # [D, K], largest first",
            "W = torch.linalg.svd(Xc, full_matrices=False)[2][:num_components].T",
            "PCA with the SVD of the centred data"),
    Variant("importance_sampling", "ppca-solution",
            "return td.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)",
            "return td.LowRankMultivariateNormal(b, W, sigma ** 2 * torch.ones(D, dtype=W.dtype, "
            "device=W.device)).log_prob(x)",
            "PPCA marginal as a LowRankMultivariateNormal"),
    Variant("importance_sampling", "ppca-solution", "mean = (x - b) @ W @ M_inv",
            "mean = torch.linalg.solve(M, W.T @ (x - b).unsqueeze(-1)).squeeze(-1)",
            "PPCA posterior mean with linalg.solve"),
    Variant("importance_sampling", "em-e-step-solution",
            "Ez = (X - b) @ W @ M_inv  # [N, K]; M is symmetric\n"
            "    Ezz = sigma ** 2 * M_inv + Ez.unsqueeze(-1) * Ez.unsqueeze(-2)  # [N, K, K]",
            "post = ppca_posterior(X, W, b, sigma)\n"
            "    Ez = post.mean\n"
            "    Ezz = post.covariance_matrix + torch.einsum('nk,nl->nkl', Ez, Ez)",
            "E-step from the student's ppca_posterior, outer products with einsum"),
    Variant("importance_sampling", "em-e-step-solution", "Ez = (X - b) @ W @ M_inv",
            "Ez = torch.linalg.solve(M, W.T @ (X - b).T).T", "E-step means with linalg.solve"),
    Variant("importance_sampling", "em-m-step-solution",
            "W = Xc.T @ Ez @ torch.linalg.inv(Ezz.sum(dim=0))",
            "W = (Xc.T @ Ez / N) @ torch.linalg.inv(Ezz.mean(dim=0))",
            "M-step W with both factors averaged over n"),
    Variant("importance_sampling", "em-m-step-solution",
            "W = Xc.T @ Ez @ torch.linalg.inv(Ezz.sum(dim=0))",
            "W = torch.linalg.solve(Ezz.sum(dim=0), sum(torch.outer(Ez[n], Xc[n]) for n in range(N))).T",
            "M-step W as a sum of outer products and linalg.solve"),
    Variant("importance_sampling", "em-m-step-solution",
            "s2 = ((Xc ** 2).sum() - 2 * (Ez * (Xc @ W)).sum() + (Ezz * (W.T @ W)).sum()) / (N * D)",
            "s2 = sum(Xc[n] @ Xc[n] - 2 * Ez[n] @ W.T @ Xc[n] + torch.trace(Ezz[n] @ W.T @ W)\n"
            "             for n in range(N)) / (N * D)",
            "M-step sigma^2 as a loop over the data points with torch.trace"),
    Variant("importance_sampling", "em-m-step-solution",
            "b = X.mean(dim=0)",
            "b = X.sum(dim=0) / N",
            "M-step b as the sum of the rows over N"),
    Variant("importance_sampling", "iwae-bound-solution",
            "return torch.logsumexp(log_weights, dim=0) - math.log(S)",
            "m = log_weights.max(0).values\n    return m + torch.log(torch.exp(log_weights - m).mean(0))",
            "IWAE bound with a hand-written max shift"),
    Variant("importance_sampling", "estimators-solution", "z = qz.rsample((num_samples,))",
            "z = qz.mean + qz.stddev * torch.randn((num_samples,) + qz.mean.shape, dtype=qz.mean.dtype, "
            "device=qz.mean.device)",
            "log-weights with manual reparameterisation of a diagonal Gaussian"),
    Variant("importance_sampling", "estimators-solution",
            "return log_weights(x, qz, joint, num_samples).mean(dim=0)",
            "return torch.stack([log_weights(x, qz, joint, 1)[0] for _ in range(num_samples)]).mean(0)",
            "ELBO estimate as a loop over single draws"),
    Variant("dpm2_beyond", "cb-normaliser-solution",
            "exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))",
            "exact = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))",
            "log C with tanh(a / 2) = (1 - exp(-a)) / (1 + exp(-a)) in log1p and expm1"),
    Variant("dpm2_beyond", "cb-normaliser-solution",
            "safe = torch.where(small, torch.ones_like(a), a)\n"
            "    exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))",
            "signed = torch.where(small, torch.ones_like(logits), logits)\n"
            "    exact = torch.log(signed.abs()) - torch.log(torch.tanh(signed / 2).abs())",
            "log C from log|l| - log|tanh(l / 2)| with the signed logit"),
    Variant("dpm2_beyond", "cb-normaliser-solution", "small = a < 1e-2", "small = a < 1e-3",
            "a Taylor branch only below |l| = 1e-3"),
    Variant("dpm2_beyond", "cb-normaliser-solution",
            "taylor = math.log(2.0) + a.pow(2) / 12  # log C = log 2 + l^2 / 12 + O(l^4)",
            "taylor = torch.log(2 + a.pow(2) / 6)",
            "Taylor expansion of C itself, then the log"),
    Variant("dpm2_beyond", "cb-log-prob-solution",
            "per_pixel = x * logits - F.softplus(logits) + cb_log_normaliser(logits)",
            "per_pixel = -F.binary_cross_entropy_with_logits(logits, x, reduction=\"none\") "
            "+ cb_log_normaliser(logits)",
            "the kernel as minus the binary cross-entropy with logits"),
    Variant("dpm2_beyond", "cb-log-prob-solution",
            "return per_pixel.sum(dim=(-3, -2, -1))  # batch_shape",
            "return per_pixel.flatten(-3).sum(-1)",
            "the sum over the pixels of the flattened image"),
    Variant("dpm2_beyond", "cb-log-prob-solution",
            "per_pixel = x * logits - F.softplus(logits) + cb_log_normaliser(logits)",
            "per_pixel = x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits) + cb_log_normaliser(logits)",
            "the kernel with F.logsigmoid"),
    Variant("dpm2_beyond", "mixture-rsample-solution",
            "z = z_all.gather(-2, index).squeeze(-2)",
            "z = (torch.nn.functional.one_hot(c, z_all.shape[-2]).unsqueeze(-1) * z_all).sum(-2)",
            "the chosen draw picked by a one-hot mask"),
    Variant("dpm2_beyond", "mixture-rsample-solution",
            "return z, qz.mixture_distribution.log_prob(c)",
            "return z, torch.log_softmax(qz.mixture_distribution.logits, -1).gather(-1, c.movedim(0, -1)).movedim(-1, 0)",
            "log w_c gathered from the log-softmax of the logits"),
    Variant("dpm2_beyond", "mixture-rsample-solution",
            "z_all = qz.component_distribution.rsample((num_samples,))",
            "comp = qz.component_distribution\n    z_all = comp.mean + comp.stddev * torch.randn_like(comp.mean.expand(num_samples, *comp.mean.shape))",
            "the pathwise draw written out as mu + sigma * eps"),
    Variant("dpm2_beyond", "mixture-surrogate-solution",
            "return (f + reward * log_w).mean(dim=0)",
            "return f.mean(0) + (reward * log_w).mean(0)",
            "the pathwise and score terms averaged apart"),
    Variant("dpm2_beyond", "mixture-surrogate-solution",
            "reward = (f - baseline).detach()",
            "reward = f.detach() - torch.as_tensor(baseline).detach()",
            "f and the baseline detached apart"),
    Variant("dpm2_beyond", "coupling-solution",
            "return ((1 - self.mask) * log_scale).sum(-1)",
            "return (log_scale * (1 - self.mask)).sum(dim=-1, keepdim=True).squeeze(-1)",
            "the log-determinant summed with keepdim, then squeezed"),
    Variant("dpm2_beyond", "coupling-solution",
            "return (y - kept * shift) * (-kept * log_scale).exp()",
            "return (y - kept * shift) / (kept * log_scale).exp()",
            "the inverse dividing by exp(s)"),
    # dpm3_discrete
    Variant("dpm3_discrete", "enumerate-solution",
            "index = torch.cartesian_prod(*[values] * n).reshape(-1, n)  # [N, n]",
            "import itertools\n"
            "    index = torch.tensor(list(itertools.product(range(classes), repeat=n)),\n"
            "                         device=values.device).reshape(-1, n)  # [N, n]",
            "the codes' indices by itertools.product"),
    Variant("dpm3_discrete", "enumerate-solution",
            "index = torch.cartesian_prod(*[values] * n).reshape(-1, n)  # [N, n]",
            "index = torch.cartesian_prod(*[values] * n).reshape(-1, n).flip(0).flip(1)  # [N, n]",
            "the codes in another order (reversed, the last unit slowest)"),
    Variant("dpm3_discrete", "enumerate-solution",
            "codes = index.to(inner.logits.dtype).reshape((-1,) + tuple(units))  # [N, K]",
            "count = torch.arange(2 ** n, device=values.device)\n"
            "        bits = (count[:, None] >> torch.arange(n, device=values.device)) & 1  # [N, n]\n"
            "        codes = bits.to(inner.logits.dtype).reshape((-1,) + tuple(units))  # [N, K]",
            "the bits by shifting the numbers 0 to 2^K - 1"),
    Variant("dpm3_discrete", "enumerate-solution",
            "codes = codes.expand((N,) + tuple(batch_shape) + event)  # [N, B, ...]",
            "codes = codes.repeat((1,) + tuple(batch_shape) + (1,) * len(event))  # [N, B, ...]",
            "repeat instead of expand over the batch"),
    Variant("dpm3_discrete", "exact-elbo-solution",
            "return (log_q.exp() * (joint.log_prob(z, x) - log_q)).sum(0)",
            "log_joint = joint.log_prob(z, x)\n"
            "    log_px = torch.logsumexp(log_joint, 0)\n"
            "    return log_px - (log_q.exp() * (log_q - (log_joint - log_px))).sum(0)",
            "the exact ELBO as log p(x) - KL(q || p(z|x))"),
    Variant("dpm3_discrete", "exact-elbo-solution",
            "return (log_q.exp() * (joint.log_prob(z, x) - log_q)).sum(0)",
            "q = torch.softmax(log_q, 0)  # the q(z|x) of every code: they sum to 1 already\n"
            "    return (q * joint.log_prob(z, x)).sum(0) - (q * log_q).sum(0)",
            "the exact ELBO as E_q[log p(x, z)] plus the entropy, q by a softmax"),
    Variant("dpm3_discrete", "leave-one-out-solution",
            "baseline = (r.sum(0, keepdim=True) - r) / (S - 1)  # [S, B]",
            "baseline = torch.stack([torch.cat([r[:s], r[s + 1:]]).mean(0)\n"
            "                                for s in range(S)])  # [S, B]",
            "the leave-one-out means by a loop over the draws"),
    Variant("dpm3_discrete", "leave-one-out-solution",
            "return r - baseline, torch.zeros_like(r)",
            "return S / (S - 1) * (r - r.mean(0, keepdim=True)), r.new_zeros(r.shape)",
            "r - b as S / (S - 1) times the centred rewards"),
    Variant("dpm3_discrete", "concrete-solution",
            "inner = td.RelaxedBernoulli(tau, logits=inner.logits)",
            "inner = td.TransformedDistribution(\n"
            "            td.relaxed_bernoulli.LogitRelaxedBernoulli(tau, logits=inner.logits),\n"
            "            [td.SigmoidTransform()])",
            "the relaxed bits as a sigmoid of LogitRelaxedBernoulli"),
    Variant("dpm3_discrete", "concrete-solution",
            "inner = td.RelaxedOneHotCategorical(tau, logits=inner.logits)",
            "inner = td.TransformedDistribution(\n"
            "            td.relaxed_categorical.ExpRelaxedCategorical(tau, logits=inner.logits),\n"
            "            [td.ExpTransform()])",
            "the relaxed one-hot variables as exp of ExpRelaxedCategorical"),
    Variant("dpm3_discrete", "straight-through-solution",
            "return hard + (probs - probs.detach())",
            "return (hard - probs).detach() + probs",
            "straight-through as (b - p).detach() + p"),
    Variant("dpm3_discrete", "straight-through-solution",
            "return hard + (probs - probs.detach())",
            "return torch.where(hard > 0.5, torch.ones_like(probs), torch.zeros_like(probs)) "
            "+ probs - probs.detach()",
            "straight-through with the hard values from torch.where"),
    Variant("dpm3_discrete", "relaxed-loss-solution",
            "z = stand_in.rsample((S,))  # [S, B, K]",
            "z = torch.stack([stand_in.rsample() for _ in range(S)])  # [S, B, K]",
            "the relaxed loss's draws one at a time"),
    Variant("dpm3_discrete", "relaxed-loss-solution",
            "return -(log_px_z.mean(0) - td.kl_divergence(qz, pz)).mean()",
            "return td.kl_divergence(qz, pz).mean() - log_px_z.mean()",
            "the relaxed loss as the mean KL minus the mean distortion"),
]
