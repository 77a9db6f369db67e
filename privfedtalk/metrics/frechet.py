"""Fréchet distance between Gaussians fitted to two feature sets.

Fréchet distance on features of a frozen network the project controls — not FID unless the features
are Inception-v3's pool3.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

# Relative residual ||X @ X - A||_F / ||A||_F above which sqrtm is deemed to have failed.
_SQRTM_TOL = 1e-5
# Largest imaginary part of sqrtm, relative to its real part, still treated as rounding noise.
_IMAG_TOL = 1e-3


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of a feature set of shape (N, D), N >= 2.

    A 1-D array (N,) is taken as N one-dimensional features.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain non-finite values")
    mu = f.mean(axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def _sqrtm_checked(a: np.ndarray) -> np.ndarray | None:
    """Matrix square root of `a`, or None if it is non-finite or does not square back to `a`."""
    x = linalg.sqrtm(a)
    if not np.all(np.isfinite(x)):
        return None
    scale = np.linalg.norm(a, "fro")
    if scale > 0 and np.linalg.norm(x @ x - a, "fro") / scale > _SQRTM_TOL:
        return None
    return x


def frechet_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    mu1, mu2: (D,); sigma1, sigma2: (D, D). The matrix square root is scipy.linalg.sqrtm. When the
    product S1 S2 is singular (e.g. fewer samples than dimensions) sqrtm can return non-finite
    values or a root that does not square back to the product; then eps * I is added to both
    covariances and the root recomputed, which biases the result by O(eps * D). The tiny imaginary
    part sqrtm may leave from rounding is discarded (a large one raises ValueError, as it means the
    inputs are not covariance matrices). Negative rounding residue is clamped, so the result is >= 0.
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"inconsistent shapes: mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    diff = m1 - m2
    covmean = _sqrtm_checked(s1 @ s2)
    if covmean is None:
        offset = np.eye(d) * eps
        s1, s2 = s1 + offset, s2 + offset
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            raise ValueError("matrix square root of the covariance product is not finite, even with eps * I")
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag))
        if imag > _IMAG_TOL * max(1.0, np.max(np.abs(covmean.real))):
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    dist = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(dist, 0.0)


def frechet_distance(features_a, features_b, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to feature sets (Na, D) and (Nb, D).

    Fréchet distance on features of a frozen network the project controls — not FID unless the
    features are Inception-v3's pool3. See `frechet_from_stats` for the singular-covariance handling.
    """
    mu_a, sigma_a = gaussian_stats(features_a)
    mu_b, sigma_b = gaussian_stats(features_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return frechet_from_stats(mu_a, sigma_a, mu_b, sigma_b, eps)
