"""Hidden tests of importance_sampling: PCA, PPCA, and the ELBO as importance sampling.

One check per graded test cell. The PPCA checks hold their own copy of the notebook's
fixtures (its cell fixtures: the test bed, exact ELBO and perturbed posteriors), so that
a student's redefinition cannot change what they compare with, and the statistical checks
share one seed (CHECK_SEED) and one tolerance in standard errors (CHECK_TOL_SE).
"""

import math

import torch
import torch.distributions as td

from course.checks._common import known_mistake, pca_problem, references_in, seeded_ppca
from dpm_core import PPCA
from dpm_core.grading import devices, expect, expect_close, expect_distribution, expect_shape

__all__ = ["CHECKS", "check_pca_basis", "check_pca_encoding", "check_ppca_marginal",
           "check_ppca_posterior_mean", "check_ppca_posterior_cov", "check_ppca_bayes",
           "check_iwae_bound", "check_iwae_stability", "check_log_weights", "check_elbo_estimate",
           "check_log_prob_estimate", "check_per_datapoint"]

#: the seed of every statistical check, as in the notebook's fixtures cell
CHECK_SEED = 0
#: the tolerance of a statistical check, in standard errors of the Monte Carlo mean
CHECK_TOL_SE = 5.0


def ppca_test_bed(seed: int = 0, device="cpu", orthogonal: bool = False, data_size: int = 6,
                  latent_size: int = 2, sigma: float = 0.7) -> PPCA:
    """The notebook's test_ppca: the course's PPCA test bed on ``device``, without gradients."""
    model = seeded_ppca(seed, orthogonal, data_size, latent_size, sigma)
    return model.to(device).requires_grad_(False)


def _ppca_params(model: PPCA) -> tuple:
    """(W [D, K], b [D], sigma []) of a PPCA model, as plain tensors."""
    cpd = model.cpd_net
    return cpd.W.detach().clone(), cpd.b.detach().clone(), cpd.sigma.detach().clone()


def _as_mvn(qz: td.Distribution) -> td.MultivariateNormal:
    """A diagonal Gaussian (Independent Normal) as a MultivariateNormal with the same batch
    shape."""
    return td.MultivariateNormal(qz.mean, scale_tril=torch.diag_embed(qz.stddev))


def _gaussian_elbo(x: torch.Tensor, qz: td.Distribution, model: PPCA) -> torch.Tensor:
    """The exact ELBO of a diagonal Gaussian q(z|x) under PPCA, shape x.shape[:-1].

    ELBO = log p(x) - KL(q(z|x) || p(z|x)), with both terms in closed form.
    """
    return model.exact_log_marginal(x) - td.kl_divergence(_as_mvn(qz), model.exact_posterior(x))


def _shifted_q(model: PPCA, x: torch.Tensor, shift: float = 0.5,
               factor: float = 1.5) -> td.Independent:
    """A diagonal Gaussian near the exact posterior: its mean moved by `shift` in every coordinate
    and its standard deviations (those of the posterior's marginals) multiplied by `factor`."""
    post = model.exact_posterior(x)
    std = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    return td.Independent(td.Normal(post.mean + shift, factor * std), 1)



def _log_weights_ref(x: torch.Tensor, qz: td.Distribution, joint, num_samples: int) -> torch.Tensor:
    """The reference log_weights: log p(z_s, x) - log q(z_s|x) for z_s ~ q (rsample),
    [S] + batch."""
    z = qz.rsample((num_samples,))
    return joint.log_prob(z, x) - qz.log_prob(z)


def _iwae_bound_ref(log_weights: torch.Tensor) -> torch.Tensor:
    """The reference iwae_bound: log of the mean weight over dimension 0."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def _elbo_estimate_ref(x: torch.Tensor, qz: td.Distribution, joint,
                       num_samples: int = 1) -> torch.Tensor:
    """The reference elbo_estimate: the mean log-weight."""
    return _log_weights_ref(x, qz, joint, num_samples).mean(dim=0)

def _posterior_m_used(mean, x, W, b, sigma):
    """The matrix M of the posterior mean M^{-1} W^T (x - b) that ``mean`` uses: the right
    W^T W + sigma^2 I, or one of the known mistakes in M (W^T W, W^T W + sigma I); the right M
    when the mean matches none of them (another mistake, graded by ppca-posterior-mean-tests).

    The covariance sigma^2 M^{-1} shares M with the mean, so that the covariance's check grades
    it with the student's own M, and a mistake in M is charged once, by the mean's check.
    """
    eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    right = W.T @ W + sigma ** 2 * eye
    for M in (right, W.T @ W, W.T @ W + sigma * eye):
        if torch.allclose(mean, (x - b) @ W @ torch.linalg.inv(M), rtol=1e-5, atol=1e-5):
            return M
    return right


def check_pca_basis(ns: dict) -> None:
    """pca's mean and basis: orthonormal top eigenvectors of the covariance, in order.

    Grades the cell pca-basis-tests.
    """
    pca = ns["pca"]
    for dev in devices():
        Xh = pca_problem(dev)
        N = Xh.shape[0]
        Xc = Xh - Xh.mean(0)
        _, _, Vh = torch.linalg.svd(Xc, full_matrices=False)  # rows: directions, largest first
        _, up_uncentred = torch.linalg.eigh(Xh.T @ Xh / N)
        _, up_ascending = torch.linalg.eigh(Xc.T @ Xc / N)
        for K in (1, 2, 4, 6):
            mean_h, W_h, Z_h = pca(Xh, K)
            expect(W_h.device.type == torch.device(dev).type and W_h.dtype == torch.float64,
                   f"W is a {W_h.dtype} tensor on {W_h.device} for float64 data on {dev}; keep the "
                   "dtype and device of X")
            expect_close(mean_h, Xh.mean(0), f"mean (K={K}, {dev})", "the mean of the rows of X",
                         rtol=1e-8, atol=1e-8)
            expect_shape(W_h, (6, K), f"W (K={K})")
            eye = torch.eye(K, dtype=torch.float64, device=dev)
            expect_close(W_h.T @ W_h, eye, f"W^T W (K={K}, {dev})",
                         "the columns of W must be orthonormal (unit length, mutually orthogonal)",
                         atol=1e-6)
            overlap = (W_h.T @ Vh[:K].T).abs()  # [K, K]; the identity for the right W, any signs
            if not torch.allclose(overlap, eye, atol=1e-5):
                top_uncentred = up_uncentred.flip(-1)[:, :K]
                if K < 6 and torch.allclose((W_h.T @ top_uncentred).abs(), eye, atol=1e-4):
                    raise AssertionError(
                        "W holds the top eigenvectors of X^T X / N, not of the covariance: did you "
                        "forget to centre the data (subtract the mean) before the "
                        "eigendecomposition?")
                proj = W_h @ W_h.T
                smallest = up_ascending[:, :K]
                if K < 6 and torch.allclose(proj, smallest @ smallest.T, atol=1e-5):
                    raise AssertionError(
                        "W spans the directions of the SMALLEST eigenvalues: torch.linalg.eigh "
                        "returns "
                        "eigenvalues in ascending order, so take the last K eigenvectors (largest "
                        "first)")
                if torch.allclose(proj, Vh[:K].T @ Vh[:K], atol=1e-5):
                    raise AssertionError(
                        "W spans the right subspace, but its columns are not sorted by decreasing "
                        "eigenvalue (or are rotated within it): put the eigenvector of the largest "
                        "eigenvalue first")
                raise AssertionError(
                    f"the columns of W (K={K}, {dev}) are not the top-{K} eigenvectors of the "
                    "covariance of the data (compared with torch.linalg.svd, up to sign)")
    print("hidden tests passed")


def check_pca_encoding(ns: dict) -> None:
    """pca's codes: the centred data projected on the basis.

    Grades the cell pca-encoding-tests.
    """
    pca = ns["pca"]
    for dev in devices():
        Xh = pca_problem(dev)
        N = Xh.shape[0]
        Xc = Xh - Xh.mean(0)
        eigvals = torch.linalg.eigvalsh(Xc.T @ Xc / N)  # ascending
        _, _, Vh = torch.linalg.svd(Xc, full_matrices=False)  # rows: directions, largest first
        for K in (1, 3):
            mean_h, W_h, Z_h = pca(Xh, K)
            expect_shape(Z_h, (N, K), f"Z (K={K})", "one row of codes per data point")
            if (torch.allclose(Z_h, Xh @ W_h, atol=1e-6)
                    and not torch.allclose(Z_h, Xc @ W_h, atol=1e-6)):
                raise AssertionError("Z = X W: subtract the mean before projecting, z = W^T (x - "
                                     "mean)")
            expect_close(Z_h, (Xh - mean_h) @ W_h, f"Z (K={K}, {dev})",
                         "the codes are z_n = W^T (x_n - mean)", rtol=1e-8, atol=1e-8)
            eye = torch.eye(K, dtype=torch.float64, device=dev)
            if not torch.allclose((W_h.T @ Vh[:K].T).abs(), eye, atol=1e-5):
                continue  # a wrong basis costs the points of pca-basis-tests, not these again
            X_rec = Z_h @ W_h.T + mean_h  # decoder
            error = ((Xh - X_rec) ** 2).sum(-1).mean()
            expect_close(error, eigvals[: 6 - K].sum(),
                         f"mean squared reconstruction error (K={K})",
                         "it must equal the sum of the discarded eigenvalues of the covariance; W "
                         "should hold the eigenvectors of the largest eigenvalues of the centred "
                         "data",
                         rtol=1e-6, atol=1e-8)
            cov_z = Z_h.T @ Z_h / N
            off_diagonal = cov_z - torch.diag_embed(cov_z.diagonal())
            expect(off_diagonal.abs().max() < 1e-6,
                   f"the codes (K={K}) are correlated (largest off-diagonal covariance "
                   f"{off_diagonal.abs().max():.3g}): the columns of W must be eigenvectors, not "
                   "any "
                   "basis of the principal subspace")
    print("hidden tests passed")


def check_ppca_marginal(ns: dict) -> None:
    """ppca_log_marginal against the closed-form N(b, W W^T + sigma^2 I).

    Grades the cell ppca-marginal-tests.
    """
    ppca_log_marginal = ns["ppca_log_marginal"]
    for dev in devices():
        model = ppca_test_bed(seed=1, device=dev)
        W, b, sigma = _ppca_params(model)
        torch.manual_seed(CHECK_SEED)
        x = model.marginal().sample((3, 5))  # [3, 5, D]
        reference = model.exact_log_marginal(x)
        try:
            lp = ppca_log_marginal(x, W, b, sigma)
        except (ValueError, RuntimeError) as err:
            if "positive" in str(err).lower() or "singular" in str(err).lower():
                raise AssertionError("the covariance of p(x) is singular: it is W W^T + sigma^2 I, "
                                     f"did you leave out sigma^2 I? ({err})") from None
            raise
        expect_shape(lp, (3, 5), f"ppca_log_marginal for x of shape [3, 5, D] ({dev})",
                     "return one log-density per observation, shape x.shape[:-1]")
        eye = torch.eye(6, dtype=torch.float64, device=dev)
        variants = {
            "the noise variance is sigma^2, not sigma": W @ W.T + sigma * eye,
            "the covariance is W W^T + sigma^2 I, not W W^T + I": W @ W.T + eye,
        }
        if not torch.allclose(lp, reference, rtol=1e-6, atol=1e-6):
            for hint, cov in variants.items():
                wrong = td.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)
                if torch.allclose(lp, wrong, rtol=1e-5, atol=1e-5):
                    raise AssertionError(f"log p(x) is wrong: {hint}")
            diagonal = td.Independent(td.Normal(b, (W ** 2).sum(-1).add(sigma ** 2).sqrt()), 1)
            if torch.allclose(lp, diagonal.log_prob(x),
                              rtol=1e-5, atol=1e-5):
                raise AssertionError("log p(x) uses only the diagonal of the covariance: the "
                                     "coordinates of x are correlated, use a full covariance")
        expect_close(lp, reference, f"log p(x) ({dev})",
                     "compare with N(x | b, W W^T + sigma^2 I)", rtol=1e-6, atol=1e-6)
        # sigma as a Python float works too
        expect_close(ppca_log_marginal(x, W, b, float(sigma)), reference,
                     "log p(x) with sigma given as a float", rtol=1e-6, atol=1e-6)
        # differentiable in W
        W_grad = W.clone().requires_grad_(True)
        ppca_log_marginal(x, W_grad, b, sigma).sum().backward()
        expect(W_grad.grad is not None and torch.isfinite(W_grad.grad).all(),
               "log p(x) is not differentiable in W: keep the computation in torch (no .item(), no "
               "numpy)")
    print("hidden tests passed")


def check_ppca_posterior_mean(ns: dict) -> None:
    """The mean of ppca_posterior against the closed form.

    Grades the cell ppca-posterior-mean-tests.
    """
    ppca_posterior = ns["ppca_posterior"]
    for dev in devices():
        model = ppca_test_bed(seed=2, device=dev)
        W, b, sigma = _ppca_params(model)
        torch.manual_seed(CHECK_SEED)
        x = model.marginal().sample((3, 5))  # [3, 5, D]
        post = ppca_posterior(x, W, b, sigma)
        expect_distribution(post, (3, 5), (2,), f"ppca_posterior for x of shape [3, 5, D] ({dev})")
        reference = model.exact_posterior(x).mean
        mean = post.mean
        expect_shape(mean, (3, 5, 2), "the posterior mean")
        if not torch.allclose(mean, reference, rtol=1e-6, atol=1e-6):
            K = W.shape[1]
            eye = torch.eye(K, dtype=torch.float64, device=dev)
            hints = [
                ((x - b) @ W, "the mean is M^{-1} W^T (x - b): you left out M^{-1}"),
                ((x - b) @ W @ torch.linalg.inv(W.T @ W),
                 "M = W^T W + sigma^2 I: you left out sigma^2 I"),
                (x @ W @ torch.linalg.inv(W.T @ W + sigma ** 2 * eye),
                 "subtract b from x: the mean is M^{-1} W^T (x - b)"),
                ((x - b) @ W @ torch.linalg.inv(W.T @ W + sigma * eye),
                 "M = W^T W + sigma^2 I, with sigma squared"),
            ]
            hint = known_mistake(mean, hints, rtol=1e-5, atol=1e-5)
            if hint:
                raise AssertionError(f"the posterior mean is wrong: {hint}")
        expect_close(mean, reference, f"the posterior mean ({dev})",
                     "it is M^{-1} W^T (x - b) with M = W^T W + sigma^2 I", rtol=1e-6, atol=1e-6)
    print("hidden tests passed")


def check_ppca_posterior_cov(ns: dict) -> None:
    """The covariance of ppca_posterior against the closed form.

    Grades the cell ppca-posterior-cov-tests.
    """
    ppca_posterior = ns["ppca_posterior"]
    for dev in devices():
        model = ppca_test_bed(seed=2, device=dev)
        W, b, sigma = _ppca_params(model)
        torch.manual_seed(CHECK_SEED)
        x = model.marginal().sample((3, 5))
        post = ppca_posterior(x, W, b, sigma)
        expect(hasattr(post, "covariance_matrix"),
               f"ppca_posterior returned a {type(post).__name__}, which has no covariance_matrix: "
               "the "
               "posterior of PPCA is correlated in general, return a td.MultivariateNormal")
        reference = model.exact_posterior(x).covariance_matrix  # [3, 5, K, K]
        cov = post.covariance_matrix
        expect_shape(cov, (3, 5, 2, 2), "the posterior covariance matrix",
                     "one K x K matrix per observation (broadcasting one matrix is fine)")
        M = W.T @ W + sigma ** 2 * torch.eye(2, dtype=torch.float64, device=dev)
        M_used = _posterior_m_used(post.mean, x, W, b, sigma)
        if not torch.equal(M_used, M) and torch.allclose(
                cov, (sigma ** 2 * torch.linalg.inv(M_used)).expand_as(cov), rtol=1e-6, atol=1e-8):
            continue  # sigma^2 M^{-1} with the M of the mean, whose mistake costs the mean's points
        if not torch.allclose(cov, reference, rtol=1e-6, atol=1e-8):
            hints = [
                (torch.linalg.inv(M), "the posterior covariance is sigma^2 M^{-1}: you left out "
                                      "sigma^2"),
                (sigma * torch.linalg.inv(M), "the posterior covariance is sigma^2 M^{-1}, with "
                                              "sigma squared"),
                (sigma ** 2 * torch.linalg.inv(W.T @ W),
                 "M = W^T W + sigma^2 I: you left out sigma^2 I"),
                (sigma ** 2 * M, "the posterior covariance uses the inverse of M"),
                (torch.diag_embed(reference.diagonal(dim1=-2, dim2=-1)),
                 "the posterior covariance is not diagonal: keep the off-diagonal entries of "
                 "sigma^2 M^{-1}"),
            ]
            for wrong, hint in hints:
                if torch.allclose(cov, wrong.expand_as(cov), rtol=1e-5, atol=1e-8):
                    raise AssertionError(f"the posterior covariance is wrong: {hint}")
        expect_close(cov, reference, f"the posterior covariance ({dev})",
                     "it is sigma^2 M^{-1} with M = W^T W + sigma^2 I", rtol=1e-6, atol=1e-8)
    print("hidden tests passed")


def check_ppca_bayes(ns: dict) -> None:
    """ppca_posterior satisfies Bayes' rule for other sizes and codes of any batch shape.

    Grades the cell ppca-bayes-tests. Where the posterior's mean or covariance is wrong on
    the test bed of their own cells, those cells charge it and this check passes.
    """
    ppca_posterior = ns["ppca_posterior"]
    for dev in devices():
        # the test bed of the mean's and covariance's checks: where the posterior is wrong
        # there, those cells charge it, and this one does not again
        model = ppca_test_bed(seed=2, device=dev)
        W, b, sigma = _ppca_params(model)
        torch.manual_seed(CHECK_SEED)
        x = model.marginal().sample((3, 5))
        post, exact = ppca_posterior(x, W, b, sigma), model.exact_posterior(x)
        if not (torch.allclose(post.mean, exact.mean, rtol=1e-6, atol=1e-6)
                and torch.allclose(post.covariance_matrix, exact.covariance_matrix,
                                   rtol=1e-6, atol=1e-8)):
            print("left to ppca-posterior-mean-tests and ppca-posterior-cov-tests")
            return
        # another size (D = 7, K = 3, sigma = 0.4) and codes with an extra sample dimension
        model = ppca_test_bed(seed=4, device=dev, data_size=7, latent_size=3, sigma=0.4)
        W, b, sigma = _ppca_params(model)
        torch.manual_seed(CHECK_SEED)
        x = model.marginal().sample((2, 3))  # [2, 3, D]
        z = 2 * torch.randn(5, 2, 3, 3, dtype=torch.float64, device=dev)
        post = ppca_posterior(x, W, b, sigma)
        expect_close(post.log_prob(z), model.exact_posterior(x).log_prob(z),
                     f"log p(z|x) at arbitrary codes (K = 3, {dev})", rtol=1e-6, atol=1e-6)
        expect_close(model.log_prob(z, x) - post.log_prob(z),
                     model.exact_log_marginal(x).expand(5, 2, 3),
                     f"log p(z, x) - log p(z|x) (K = 3, {dev})", "Bayes' rule: it must equal log "
                                                                 "p(x)",
                     rtol=1e-6, atol=1e-6)
    print("hidden tests passed")


def check_iwae_bound(ns: dict) -> None:
    """iwae_bound: log of the mean weight over the sample dimension.

    Grades the cell iwae-bound-tests.
    """
    iwae_bound = ns["iwae_bound"]
    for dev in devices():
        gen = torch.Generator().manual_seed(CHECK_SEED)
        lw = 3 * torch.randn(7, 3, 5, generator=gen, dtype=torch.float64) - 10
        lw = lw.to(dev)  # [S, 3, 5]
        reference = torch.log(torch.exp(lw).mean(0))  # safe for these moderate values
        out = iwae_bound(lw)
        expect_shape(out, (3, 5), f"iwae_bound of log-weights [S=7, 3, 5] ({dev})",
                     "reduce over the first (sample) dimension only")
        if torch.allclose(out, reference + math.log(7), rtol=1e-6, atol=1e-6):
            raise AssertionError("iwae_bound is log sum_s w_s: subtract log S, the bound is the "
                                 "log of "
                                 "the AVERAGE weight")
        if torch.allclose(out, lw.mean(0), rtol=1e-6, atol=1e-6):
            raise AssertionError("iwae_bound averages the log-weights: that is the ELBO estimate, "
                                 "which "
                                 "Jensen's inequality puts below the bound; take the log of the "
                                 "average "
                                 "weight instead")
        expect_close(out, reference, f"iwae_bound ({dev})", "it is log (1/S) sum_s exp(log w_s)",
                     rtol=1e-8, atol=1e-8)
        # one sample: the bound is the log-weight itself
        expect_close(iwae_bound(lw[:1]), lw[0], "iwae_bound with S = 1",
                     "with one sample it is log w_1",
                     rtol=1e-10, atol=1e-10)
        # a plain vector of log-weights gives a scalar
        expect_close(iwae_bound(lw[:, 0, 0]), reference[0, 0], "iwae_bound of log-weights [S]",
                     rtol=1e-8, atol=1e-8)
    print("hidden tests passed")


def check_iwae_stability(ns: dict) -> None:
    """iwae_bound stays finite and exact for very large and very small log-weights.

    Grades the cell iwae-stability-tests.
    """
    iwae_bound = ns["iwae_bound"]
    for dev in devices():
        gen = torch.Generator().manual_seed(CHECK_SEED)
        lw = (2 * torch.randn(50, 4, generator=gen, dtype=torch.float64)).to(dev)  # [S, B]
        base = iwae_bound(lw)
        for c in (-1e5, -800.0, 800.0, 1e4):
            out = iwae_bound(lw + c)
            expect(torch.isfinite(out).all(),
                   f"iwae_bound gives {out.tolist()} for log-weights around {c:g} ({dev}): exp "
                   "over- or "
                   "underflows; subtract the largest log-weight first (or use torch.logsumexp)")
            expect_close(out - c, base, f"iwae_bound(log-weights + {c:g}) - {c:g} ({dev})",
                         "shifting every log-weight by c must shift the bound by c",
                         rtol=1e-9, atol=1e-6)
        # float32 log-weights of a realistic size
        out32 = iwae_bound(lw.float() - 300.0)
        expect(torch.isfinite(out32).all(), "iwae_bound is not finite for float32 log-weights "
                                            "around -300")
        # the gradient with respect to the log-weights is finite, and shifting the log-weights
        # does not change it (your own gradient at moderate values: which dimension it reduces
        # is graded by iwae-bound-tests)
        lw_grad = (lw - 1e4).requires_grad_(True)
        iwae_bound(lw_grad).sum().backward()
        expect(lw_grad.grad is not None and torch.isfinite(lw_grad.grad).all(),
               "the gradient of iwae_bound is not finite for log-weights around -1e4")
        lw_moderate = lw.clone().requires_grad_(True)
        iwae_bound(lw_moderate).sum().backward()
        expect_close(lw_grad.grad, lw_moderate.grad,
                     "the gradient of iwae_bound at log-weights around -1e4",
                     "shifting every log-weight must not change the gradient (the normalised "
                     "weights); subtract the largest log-weight first (or use torch.logsumexp)",
                     atol=1e-8)
    print("hidden tests passed")


def check_log_weights(ns: dict) -> None:
    """log_weights: log p(z, x) - log q(z) of draws from q, with gradients.

    Grades the cell log-weights-tests.
    """
    log_weights = ns["log_weights"]
    for dev in devices():
        model = ppca_test_bed(seed=5, device=dev)
        torch.manual_seed(CHECK_SEED)
        x = model.marginal().sample((3, 5))  # [3, 5, D]
        post = model.exact_posterior(x)
        log_px = model.exact_log_marginal(x)
        for S in (1, 6):
            lw = log_weights(x, post, model, S)
            expect_shape(lw, (S, 3, 5), f"log_weights for x of shape [3, 5, D] and S={S} ({dev})",
                         "the shape is [S] + batch_shape")
            if S > 1:
                expect(lw.std(0).max() < 1e-6,
                       "with the exact posterior as proposal the log-weights still vary from draw "
                       "to "
                       "draw: the log-weight is log p(z, x) - log q(z|x) with z drawn from q; did "
                       "you "
                       "forget to subtract log q(z|x), or draw z from the prior?")
            if torch.allclose(lw, -log_px.expand_as(lw), rtol=1e-6, atol=1e-6):
                raise AssertionError("the log-weights have the wrong sign: log w = log p(z, x) - "
                                     "log q(z|x)")
            expect_close(lw, log_px.expand_as(lw),
                         f"the log-weights under the exact posterior ({dev})",
                         "with q = p(z|x) every log-weight equals log p(x)", rtol=1e-6, atol=1e-6)

        # pathwise gradient: E[d log w / d loc] must equal the gradient of the exact ELBO.
        # S = 20000 draws, seed CHECK_SEED; tolerance CHECK_TOL_SE standard errors plus 0.02
        # absolute.
        x4 = x[0, :4]
        loc = (model.exact_posterior(x4).mean + 1.0).clone().requires_grad_(True)  # [4, K]
        scale = torch.full_like(loc, 0.4)
        torch.manual_seed(CHECK_SEED)
        S = 20000
        lw = log_weights(x4, td.Independent(td.Normal(loc, scale), 1), model, S)  # [S, 4]
        expect(lw.requires_grad,
               "the log-weights do not depend on the parameters of q: draw z with qz.rsample, not "
               "qz.sample")
        grad_mc, = torch.autograd.grad(lw.mean(0).sum(), loc)
        loc_ref = loc.detach().clone().requires_grad_(True)
        grad_ref, = torch.autograd.grad(
            _gaussian_elbo(x4, td.Independent(td.Normal(loc_ref, scale), 1), model).sum(), loc_ref)
        W = model.cpd_net.W
        # d log w / d loc = grad_z log p(z, x) = W^T (x - W z - b) / sigma^2 - z: its per-draw
        # spread
        se = (0.4 * (W.T @ W / model.cpd_net.sigma ** 2 + torch.eye(2, dtype=W.dtype, device=dev))
              .norm(dim=0)) / math.sqrt(S)  # [K]
        if grad_mc.abs().max() < 0.2 * grad_ref.abs().max():
            raise AssertionError(
                "the gradient of the average log-weight with respect to q's mean is about 0, not "
                "the "
                "gradient of the ELBO: draw z with qz.rsample (reparameterised), not qz.sample")
        expect(((grad_mc - grad_ref).abs() <= CHECK_TOL_SE * se + 0.02).all(),
               f"the gradient of the average log-weight with respect to q's mean ({dev}) differs "
               "from "
               f"the gradient of the exact ELBO by up to {(grad_mc - grad_ref).abs().max():.3g}; "
               "draw z "
               "with qz.rsample and compute log p(z, x) - log q(z|x) with the same z")
    print("hidden tests passed")


def check_elbo_estimate(ns: dict) -> None:
    """elbo_estimate: the mean log-weight, unbiased for the exact ELBO.

    Grades the cell elbo-estimate-tests.
    """
    elbo_estimate = ns["elbo_estimate"]
    # the student's elbo_estimate calls the reference log_weights: a log_weights mistake costs once
    with references_in(ns, log_weights=_log_weights_ref):
        for dev in devices():
            model = ppca_test_bed(seed=6, device=dev)
            torch.manual_seed(CHECK_SEED)
            x = model.marginal().sample((4,))  # [4, D]
            R = 4000  # independent one-sample estimates per observation, as a batch
            x_rep = x.expand(R, 4, 6)
            # a diagonal Gaussian 1.5 to 2 nats worse than the posterior
            q_rep = _shifted_q(model, x_rep)
            exact = _gaussian_elbo(x, _shifted_q(model, x), model)  # [4]
            torch.manual_seed(CHECK_SEED)
            for S in (1, 10):
                est = elbo_estimate(x_rep, q_rep, model, S).detach()  # [R, 4]
                expect_shape(est, (R, 4), f"elbo_estimate for x of shape [{R}, 4, D] and S={S}")
                mean, se = est.mean(0), est.std(0) / math.sqrt(R)
                if S == 10 and (mean - exact > CHECK_TOL_SE * se + 0.05).any():
                    raise AssertionError(
                        "the average of elbo_estimate with S=10 lies above the exact ELBO: the "
                        "ELBO averages "
                        "the log-weights; did you take the log of the average weight (the IWAE "
                        "estimate)?")
                expect(((mean - exact).abs() <= CHECK_TOL_SE * se + 0.01).all(),
                       f"elbo_estimate with S={S} ({dev}) averages {mean.tolist()} over {R} "
                       "repeats, but the "
                       f"exact ELBO is {exact.tolist()} (tolerance {CHECK_TOL_SE} standard errors "
                       "+ 0.01): it "
                       "should be the mean of log p(z, x) - log q(z|x) over S draws from q")
    print("hidden tests passed")


def check_log_prob_estimate(ns: dict) -> None:
    """log_prob_estimate: the IWAE bound of the log-weights.

    Grades the cell log-prob-estimate-tests.
    """
    log_prob_estimate = ns["log_prob_estimate"]
    # with the reference log_weights and iwae_bound, so that their mistakes cost points once
    with references_in(ns, log_weights=_log_weights_ref, iwae_bound=_iwae_bound_ref):
        for dev in devices():
            model = ppca_test_bed(seed=7, device=dev)
            torch.manual_seed(CHECK_SEED)
            x = model.marginal().sample((3, 5))
            est = log_prob_estimate(x, model.exact_posterior(x), model, 20)
            expect_shape(est, (3, 5), f"log_prob_estimate for x of shape [3, 5, D] ({dev})")
            expect_close(est, model.exact_log_marginal(x),
                         f"log_prob_estimate with the exact posterior ({dev})",
                         rtol=1e-6, atol=1e-6)

        # Statistical properties with a proposal 1.5 to 2 nats worse than the posterior, on the CPU.
        # Seed CHECK_SEED; R independent estimates per observation (as a batch); tolerance
        # CHECK_TOL_SE standard
        # errors of the mean over the R repeats, plus the absolute slack stated in each check.
        model = ppca_test_bed(seed=8)
        torch.manual_seed(CHECK_SEED)
        x = model.marginal().sample((4,))
        log_px = model.exact_log_marginal(x)
        elbo = _gaussian_elbo(x, _shifted_q(model, x), model)
        means, ses = {}, {}
        with torch.no_grad():
            for S, R in ((1, 4000), (10, 400), (100, 100), (1000, 40)):
                x_rep = x.expand(R, 4, 6)
                est = log_prob_estimate(x_rep, _shifted_q(model, x_rep), model, S)  # [R, 4]
                expect_shape(est, (R, 4), f"log_prob_estimate for x of shape [{R}, 4, D] and S={S}")
                means[S], ses[S] = est.mean(0), est.std(0) / math.sqrt(R)
        expect(((means[1] - elbo).abs() <= CHECK_TOL_SE * ses[1] + 0.01).all(),
               "with S=1 the estimate should equal the ELBO in expectation: mean over 4000 "
               "repeats "
               f"{means[1].tolist()}, exact ELBO {elbo.tolist()}")
        for small, large in ((1, 10), (10, 100), (100, 1000)):
            expect((means[large] > means[small] - CHECK_TOL_SE * (ses[small] + ses[large])).all(),
                   f"the estimate does not grow from S={small} to S={large} "
                   f"({means[small].tolist()} -> {means[large].tolist()}): did you average the "
                   "log-weights "
                   "(that is the ELBO for every S) instead of taking the log of the average "
                   "weight?")
        expect((means[10] - means[1] > 0.5).all() and (means[100] - means[10] > 0.05).all(),
               "the estimate grows too little with S: the log of the average weight should climb "
               "from the "
               "ELBO towards log p(x); did you average the log-weights (that is the ELBO for every "
               "S)? Means "
               "for S = 1, 10, 100: "
               f"{[[round(v, 3) for v in means[S].tolist()] for S in (1, 10, 100)]}")
        expect((means[1000] <= log_px + CHECK_TOL_SE * ses[1000] + 0.01).all(),
               f"with S=1000 the estimate {means[1000].tolist()} lies above log p(x) = "
               f"{log_px.tolist()}: "
               "it is a lower bound in expectation; did you forget the -log S?")
        expect(((means[1000] - log_px).abs() <= CHECK_TOL_SE * ses[1000] + 0.05).all(),
               f"with S=1000 the estimate {means[1000].tolist()} should be within 0.05 nats of log "
               "p(x) = "
               f"{log_px.tolist()} (plus {CHECK_TOL_SE} standard errors)")
    print("hidden tests passed")


def check_per_datapoint(ns: dict) -> None:
    """fit_per_datapoint finds the best mean-field Gaussian of a PPCA posterior.

    Grades the cell per-datapoint-tests.
    """
    fit_per_datapoint = ns["fit_per_datapoint"]
    # with the reference elbo_estimate, so that an estimator mistake costs points once
    with references_in(ns, elbo_estimate=_elbo_estimate_ref):
        for dev in devices():
            model = ppca_test_bed(seed=9, device=dev, orthogonal=True)
            W_before = model.cpd_net.W.clone()
            torch.manual_seed(CHECK_SEED)
            x = model.marginal().sample((2, 3))  # [2, 3, D]
            q = fit_per_datapoint(x, model, num_steps=400, lr=0.05, num_samples=8)
            expect_distribution(q, (2, 3), (2,), "fit_per_datapoint for x of shape [2, 3, D] "
                                                 f"({dev})")
            expect(torch.equal(model.cpd_net.W, W_before),
                   "fit_per_datapoint changed the model's parameters: optimise only q's mean and "
                   "scale")
            expect(not q.mean.requires_grad, "return the fitted q detached from the graph (use "
                                             ".detach())")
            prior_q = td.Independent(td.Normal(torch.zeros_like(q.mean),
                                               torch.ones_like(q.mean)), 1)
            elbo_fit, elbo_prior = _gaussian_elbo(x, q, model), _gaussian_elbo(x, prior_q, model)
            post = model.exact_posterior(x)
            post_std = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
            means_fit = bool(((q.mean - post.mean).abs() < 0.15).all())
            if (elbo_fit < elbo_prior).any():
                # the means were trained; what is returned as the scale is not what was
                if means_fit:
                    raise AssertionError("the fitted means are right but the returned scales are "
                                         "far "
                                         "from the posterior's: return the same positive transform "
                                         "of "
                                         "the trained parameter (softplus) that the loss used")
                raise AssertionError("the fitted q has a lower ELBO than the prior it started "
                                     "from: did you "
                                     "minimise the ELBO? Minimise its negative")
            gap = model.exact_log_marginal(x) - elbo_fit
            # 0.25 nats: the last Adam iterate on 8-draw gradients jitters; with the draws and data
            # of 100 seeds the reference's largest gap was 0.151 (typically 0.05), and a fit that
            # stops after 8 steps is more than 1 nat away
            expect((gap < 0.25).all(),
                   f"the fitted q's ({dev}) are up to {gap.max():.3f} nats below log p(x); with a "
                   "diagonal "
                   "posterior they should get within 0.25 nats. Check that the loss is "
                   "-elbo_estimate "
                   "(summed or averaged over the batch), that z is drawn with rsample, and that "
                   "both the "
                   "mean and the scale are updated")
            expect(((q.stddev - post_std).abs() < 0.15).all(),
                   "the fitted scales are far from the posterior's standard deviations: are the "
                   "scales "
                   "trained, and kept positive with softplus?")
    print("hidden tests passed")


CHECKS = {
    "pca-basis-tests": check_pca_basis,
    "pca-encoding-tests": check_pca_encoding,
    "ppca-marginal-tests": check_ppca_marginal,
    "ppca-posterior-mean-tests": check_ppca_posterior_mean,
    "ppca-posterior-cov-tests": check_ppca_posterior_cov,
    "ppca-bayes-tests": check_ppca_bayes,
    "iwae-bound-tests": check_iwae_bound,
    "iwae-stability-tests": check_iwae_stability,
    "log-weights-tests": check_log_weights,
    "elbo-estimate-tests": check_elbo_estimate,
    "log-prob-estimate-tests": check_log_prob_estimate,
    "per-datapoint-tests": check_per_datapoint,
}
