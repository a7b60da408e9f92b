"""The geometry of the latent views, in plain torch: paths between codes, the pad's plane.

Nothing here draws: the plane maps codes ``[..., K]`` to points ``[..., 2]`` and back, and
the paths give the codes between two ends (White 2016 [1]).

References:
    [1] White (2016). Sampling Generative Networks. arXiv:1609.04468.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.distributions as td
from torch import Tensor


__all__ = ["lerp", "slerp", "PATHS", "PATH_FNS", "ELLIPSE_SD", "Plane", "gaussian_components",
           "nearest", "z_name"]

PATHS = ("linear", "spherical")
_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
# the ellipses drawn for Gaussians hold the points within 2 standard deviations
# (Mahalanobis): P(chi2_2 <= 4) = 1 - exp(-2) = 86% of a 2-D Gaussian's mass
ELLIPSE_SD = 2.0


def lerp(z_a: Tensor, z_b: Tensor, t: Union[float, Tensor]) -> Tensor:
    """The straight line between two codes: (1 - t) z_a + t z_b.

    Args:
        z_a: the code at t = 0, ``[K]``.
        z_b: the code at t = 1, ``[K]``.
        t: a float, or a tensor ``[T]`` of points along the path.

    Returns:
        ``[K]`` for a float t, ``[T, K]`` for a tensor.
    """
    t = torch.as_tensor(t, dtype=z_a.dtype, device=z_a.device)
    if t.dim() == 1:
        t = t[:, None]  # [T, 1]
    return (1 - t) * z_a + t * z_b


def slerp(z_a: Tensor, z_b: Tensor, t: Union[float, Tensor]) -> Tensor:
    """The spherical path between two codes (White 2016 [1]).

    slerp(z_a, z_b; t) = sin((1 - t) w) / sin(w) z_a + sin(t w) / sin(w) z_b, where w
    is the angle between z_a and z_b. Under a N(0, I) prior in K dimensions most of
    the mass lies near the sphere of radius sqrt(K), and the straight line between
    two codes cuts through its improbable inside; the spherical path keeps to the
    arc (for codes of equal norm, every point on it has that norm). Where the angle
    is 0 or pi (parallel codes, or a code at the origin) the arc is not defined and
    the straight line is returned. Arguments and result as for :func:`lerp`.
    """
    norms = z_a.norm() * z_b.norm()
    if norms <= 1e-12:
        return lerp(z_a, z_b, t)
    cos_w = (z_a @ z_b / norms).clamp(-1.0, 1.0)
    w = torch.arccos(cos_w)
    sin_w = torch.sin(w)
    if sin_w <= 1e-6:
        return lerp(z_a, z_b, t)
    t = torch.as_tensor(t, dtype=z_a.dtype, device=z_a.device)
    if t.dim() == 1:
        t = t[:, None]  # [T, 1]
    return (torch.sin((1 - t) * w) * z_a + torch.sin(t * w) * z_b) / sin_w


PATH_FNS = {"linear": lerp, "spherical": slerp}


def z_name(k: int) -> str:
    """z with a subscript, e.g. z₃."""
    return "z" + str(k).translate(_SUBSCRIPTS)


def gaussian_components(dist: td.Distribution) -> list[tuple[float, Tensor, Tensor]]:
    """The diagonal Gaussians that make up a distribution over ``[K]`` with batch_shape ``()``.

    Returns:
        ``(weight, loc [K], scale [K])`` for ``Independent(Normal)`` (one, weight 1) or
        each component of a ``MixtureSameFamily`` of them; an empty list otherwise.
    """
    if isinstance(dist, td.MixtureSameFamily):
        weights = dist.mixture_distribution.probs.reshape(-1)  # [M]
        comps = dist.component_distribution
        base = comps.base_dist if isinstance(comps, td.Independent) else comps
        if not isinstance(base, td.Normal):
            return []
        locs, scales = base.loc.reshape(len(weights), -1), base.scale.reshape(len(weights), -1)
        return [(float(w), loc.detach().cpu(), scale.detach().cpu())
                for w, loc, scale in zip(weights, locs, scales)]
    base = dist.base_dist if isinstance(dist, td.Independent) else dist
    if isinstance(base, td.Normal):
        return [(1.0, base.loc.detach().reshape(-1).cpu(), base.scale.detach().reshape(-1).cpu())]
    return []


def nearest(points: Tensor, point: Tensor) -> int:
    """The index of the row of ``points`` ``[N, 2]`` closest to ``point`` ``[2]``."""
    return int(((points - point) ** 2).sum(-1).argmin())


class Plane:
    """A 2-D plane of the latent space: where the pad's points live.

    Either two coordinate axes (``dims``) or an affine plane ``centre + basis @ uv``
    with an orthonormal basis ``[K, 2]`` (principal components).
    """

    def __init__(self, K: int, dims: Optional[tuple] = (0, 1), centre: Optional[Tensor] = None,
                 basis: Optional[Tensor] = None, names: tuple = ("", "")):
        self.K, self.dims, self.centre, self.basis, self.names = K, dims, centre, basis, names

    @classmethod
    def fit(cls, codes: Optional[Tensor], K: int) -> "Plane":
        """The latent itself for K = 2; the principal plane of ``codes`` for K > 2."""
        if K == 2 or codes is None or codes.shape[0] < 3:
            return cls(K, dims=(0, 1), names=(z_name(0), z_name(1)))
        centre = codes.mean(0)  # [K]
        # principal directions: right singular vectors of the centred codes
        _, _, vh = torch.linalg.svd(codes - centre, full_matrices=False)
        basis = vh[:2].T.contiguous()  # [K, 2]
        # fix each direction's sign (SVD's is arbitrary): largest entry positive
        signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
        return cls(K, dims=None, centre=centre, basis=basis * signs,
                   names=("PC 1 of the codes", "PC 2 of the codes"))

    def project(self, z: Tensor) -> Tensor:
        """Coordinates ``[..., 2]`` in the plane of codes ``[..., K]`` (orthogonal projection)."""
        if self.dims is not None:
            return z[..., list(self.dims)]
        return (z - self.centre.to(z)) @ self.basis.to(z)

    def lift(self, uv: Tensor, z: Tensor) -> Tensor:
        """The code whose projection is ``uv`` ``[2]`` and whose part off the plane is z's."""
        if self.dims is not None:
            z = z.clone()
            z[list(self.dims)] = uv.to(z)
            return z
        return z + self.basis.to(z) @ (uv.to(z) - self.project(z))

    def covariance(self, scale: Tensor) -> Tensor:
        """The ``[2, 2]`` covariance in the plane of a Gaussian with diagonal scales ``[K]``."""
        if self.dims is not None:
            return torch.diag(scale[list(self.dims)] ** 2)
        return self.basis.T @ torch.diag(scale ** 2) @ self.basis

