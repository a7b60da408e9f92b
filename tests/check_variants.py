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
]
