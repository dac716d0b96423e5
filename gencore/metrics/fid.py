"""Fréchet distance between feature statistics, and a streaming FID accumulator.

The Fréchet (2-Wasserstein) distance between Gaussians N(mu1, S1) and N(mu2, S2) is

    d² = |mu1 - mu2|² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^½).

S1 S2 is not symmetric, and pytorch-fid takes its square root with scipy.linalg.sqrtm, which can return complex
values or fail ("imaginary component") when the product is singular, e.g. with fewer samples than feature
dimensions. The eigenvalues of S1 S2 are those of the symmetric PSD matrix S1^½ S2 S1^½ (AB and BA have the same
non-zero eigenvalues), so

    Tr((S1 S2)^½) = Tr((S1^½ S2 S1^½)^½) = sum of singular values of S2^½ S1^½        (the nuclear norm)

because (S2^½ S1^½)ᵀ(S2^½ S1^½) = S1^½ S2 S1^½. gencore computes S1^½ and S2^½ with a symmetric
eigendecomposition (eigenvalues that are zero up to rounding, including slightly negative ones, are set to 0; see
`sqrtm_psd`) and the trace as the sum of singular values of their product. Both steps are real and defined for every PSD input. Why singular values
rather than the square roots of the eigenvalues of S1^½ S2 S1^½: an eigenvalue that is zero in exact arithmetic
comes out as ~eps·|M| and its square root as ~1e-8·|S|, so rank-deficient statistics (fewer samples than
dimensions) would carry an error of ~1e-8·|S| per missing rank (1e-3 absolute on MNIST-classifier scales); the
singular values of S2^½ S1^½ carry only eps·|S| each. Everything is float64, in torch, on the statistics' device.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .classifier import check_images, classifier_info, load_mnist_classifier

__all__ = ["FID", "FeatureStatistics", "frechet_distance", "sqrtm_psd"]


def _as_float64(name: str, x, device=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real floating-point tensor, got {x.dtype}")
    x = x.to(device=device if device is not None else x.device, dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (D, D) through eigh.

    The input is symmetrised first (a covariance with rounding asymmetry is fine). Eigenvalues at or below
    D * eps * max|eigenvalue| are set to 0: eigh's backward error is ~eps * |S|, so such eigenvalues are zero up to
    rounding (negative ones are pure rounding). Keeping them would put ~sqrt(eps * |S|) = 1e-8 * sqrt|S| noise into
    every null direction of the root, which for rank-deficient covariances adds up to a visible error in the FID.
    """
    sym = (matrix + matrix.transpose(-1, -2)) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(sym)
    if eigenvalues.numel():
        threshold = eigenvalues.abs().max() * (sym.shape[-1] * torch.finfo(sym.dtype).eps)
        eigenvalues = torch.where(eigenvalues > threshold, eigenvalues, torch.zeros_like(eigenvalues))
    return (eigenvectors * eigenvalues.sqrt().unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½) between two Gaussians (the FID of two feature sets).

    Parameters:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) covariances (symmetric PSD). torch tensors (any device; the
            computation runs on mu1's device) or numpy arrays, any real dtype: everything is converted to float64.

    Returns:
        The distance as a Python float, >= 0 (0 for identical statistics up to float64 rounding). Singular or
        rank-deficient covariances are fine: the trace term uses the symmetric form described in the module doc.

    Raises:
        ValueError: shapes that do not match (names the argument and both widths), non-square or non-symmetric
            covariances, NaN or infinite values.
    """
    device = mu1.device if isinstance(mu1, torch.Tensor) else None
    mu1, mu2 = _as_float64("mu1", mu1, device), _as_float64("mu2", mu2, device)
    sigma1, sigma2 = _as_float64("sigma1", sigma1, device), _as_float64("sigma2", sigma2, device)
    if mu1.dim() != 1 or mu2.dim() != 1:
        raise ValueError(f"mu1 and mu2 must be 1-D, got shapes {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 have different feature widths: {mu1.shape[0]} and {mu2.shape[0]}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if tuple(s.shape) != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match the means, got {tuple(s.shape)}")
        scale = float(s.abs().max()) if s.numel() else 0.0
        if not torch.allclose(s, s.T, rtol=1e-6, atol=1e-9 * max(scale, 1e-300)):
            raise ValueError(f"{name} is not symmetric: it is not a covariance matrix")
    root1, root2 = sqrtm_psd(sigma1), sqrtm_psd(sigma2)
    trace_sqrt_product = torch.linalg.svdvals(root2 @ root1).sum()
    diff = mu1 - mu2
    value = diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt_product
    return max(float(value), 0.0)  # mathematically >= 0; a rounding-level negative becomes 0


class FeatureStatistics(NamedTuple):
    """Mean (D,), covariance (D, D) (unbiased, n - 1) and sample count of a feature set, float64."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int


class _RunningMoments:
    """Streaming mean and scatter matrix in float64, merged batch by batch (Chan et al.'s pairwise update):
    each batch is centred on its own mean before its outer products are taken, so large feature offsets do not
    cancel catastrophically (the raw E[xxᵀ] - mean meanᵀ would), and the result depends on the batching and the
    order of updates only through float64 rounding."""

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None  # sum of (x - mean)(x - mean)ᵀ

    def update(self, x: torch.Tensor) -> None:
        n_b = x.shape[0]
        mean_b = x.mean(0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self.count == 0:
            self.count, self.mean, self.scatter = n_b, mean_b, scatter_b
            return
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (self.count * n_b / total)
        self.count = total

    def merge(self, count: int, mean: torch.Tensor, scatter: torch.Tensor) -> None:
        if self.count == 0:
            self.count, self.mean, self.scatter = count, mean, scatter
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.scatter = self.scatter + scatter + torch.outer(delta, delta) * (self.count * count / total)
        self.count = total


class FID:
    """Streaming Fréchet Inception Distance (with gencore's MNIST classifier features by default).

        fid = FID()                                   # features: load_mnist_classifier().features, 128-wide
        for real in real_batches: fid.update(real, real=True)
        for fake in fake_batches: fid.update(fake, real=False)
        print(fid.compute())
        fid.save_reference("mnist_ref.safetensors")   # reuse the real statistics: FID().load_reference(path)

    Only the running mean and scatter matrix of each side are kept (float64 (D,) and (D, D)), never the features.

    Parameters:
        feature_extractor: a callable mapping a batch of images to (N, D) features; None (default) uses the shipped
            MNIST classifier's penultimate features (images (N, 1, 28, 28) in [-1, 1], checked). Its outputs are
            converted to float64 on `device`.
        device: where the statistics live and FID is computed (default: the extractor's parameters' device, else
            the device of the first batch). Batches on another device are moved.
        batch_size: images are fed to the extractor in chunks of this size (memory), without changing the result.
        name: identifies the feature extractor in saved reference statistics (a reference saved with other features
            is refused on load). Default: "gencore-mnist-classifier:<weights sha256 prefix>" or the callable's name.

    Methods: update(images, real), update_features(features, real), compute(), reset(real=True, fake=True),
    statistics(real), save_reference(path), load_reference(path).
    """

    def __init__(self, feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                 device: str | torch.device | None = None, batch_size: int = 500, name: str | None = None):
        self._check_images = None  # the default classifier's input check; custom extractors check their own
        if feature_extractor is None:
            model = load_mnist_classifier(device or "cpu")
            feature_extractor = model.features
            name = name or f"gencore-mnist-classifier:{classifier_info()['sha256'][:16]}"
            self._check_images = check_images
            device = device or next(model.parameters()).device
        elif not callable(feature_extractor):
            raise TypeError(f"feature_extractor must be callable, got {type(feature_extractor).__name__}")
        if device is None and isinstance(feature_extractor, torch.nn.Module):
            params = list(feature_extractor.parameters())
            device = params[0].device if params else None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.feature_extractor = feature_extractor
        self.device = torch.device(device) if device is not None else None
        self.batch_size = batch_size
        self.name = name or getattr(feature_extractor, "__qualname__", type(feature_extractor).__name__)
        self.reset()

    # -- accumulation -----------------------------------------------------------------------------------------
    def reset(self, real: bool = True, fake: bool = True) -> None:
        """Forget the real and/or fake statistics (reset(real=False) keeps a loaded reference)."""
        if real:
            self._real = _RunningMoments()
        if fake:
            self._fake = _RunningMoments()

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch of images (whatever the extractor takes; (N, 1, 28, 28) in [-1, 1] for the default) to the
        real (real=True) or generated (real=False) statistics."""
        if not isinstance(real, bool):
            raise TypeError(f"real must be True or False, got {real!r}")
        if self._check_images is not None:
            self._check_images(images)
        elif not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        device = self.device or images.device
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start:start + self.batch_size].to(device)
            if self._check_images is not None:
                chunk = chunk.float()
            self.update_features(self.feature_extractor(chunk), real=real)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        """Add precomputed (N, D) features to the real or generated statistics (N >= 1; the same D throughout)."""
        if not isinstance(real, bool):
            raise TypeError(f"real must be True or False, got {real!r}")
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(features)
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 2 or features.shape[0] == 0:
            raise ValueError(f"features must have shape (N, D) with N >= 1, got {tuple(features.shape)}")
        if self.device is None:
            self.device = features.device
        x = _as_float64("features", features.detach(), self.device)
        width = self.feature_dim
        if width is not None and x.shape[1] != width:
            raise ValueError(f"features have width {x.shape[1]}, but the statistics so far have width {width}")
        (self._real if real else self._fake).update(x)

    @property
    def feature_dim(self) -> int | None:
        for m in (self._real, self._fake):
            if m.mean is not None:
                return m.mean.shape[0]
        return None

    def count(self, real: bool) -> int:
        return (self._real if real else self._fake).count

    def statistics(self, real: bool) -> FeatureStatistics:
        """Mean, unbiased covariance and count of the real or generated features so far (needs >= 2 samples)."""
        m = self._real if real else self._fake
        side = "real" if real else "generated"
        if m.count < 2:
            raise ValueError(f"FID needs at least 2 {side} samples to estimate a covariance, got {m.count}")
        return FeatureStatistics(m.mean, m.scatter / (m.count - 1), m.count)

    def compute(self) -> float:
        """The FID between the real and generated statistics so far (float >= 0). Raises ValueError with fewer
        than 2 samples on either side."""
        real, fake = self.statistics(True), self.statistics(False)
        return frechet_distance(real.mean, real.cov, fake.mean, fake.cov)

    # -- reference statistics ---------------------------------------------------------------------------------
    def save_reference(self, path: str | os.PathLike, real: bool = True) -> None:
        """Save the real (or generated) statistics (count, mean, scatter; float64) as safetensors, atomically,
        with the feature extractor's name in the metadata."""
        m = self._real if real else self._fake
        if m.count < 2:
            raise ValueError(f"nothing to save: {m.count} {'real' if real else 'generated'} samples (need >= 2)")
        tensors = {"count": torch.tensor([m.count], dtype=torch.int64), "mean": m.mean.cpu().contiguous(),
                   "scatter": m.scatter.cpu().contiguous()}
        blob = save(tensors, metadata={"format": "gencore-fid-statistics-v1", "feature_extractor": self.name})
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_reference(self, path: str | os.PathLike, real: bool = True) -> None:
        """Replace the real (or generated) statistics with ones saved by `save_reference`. Raises ValueError if
        they were computed with a different feature extractor (by name) or width."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"FID statistics file not found: {path}")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "gencore-fid-statistics-v1":
                    raise ValueError(f"{path} is not a gencore FID statistics file (metadata {meta})")
                if meta.get("feature_extractor") != self.name:
                    raise ValueError(f"{path} holds statistics of features {meta.get('feature_extractor')!r}, this "
                                     f"FID uses {self.name!r}")
                count, mean, scatter = (f.get_tensor(k) for k in ("count", "mean", "scatter"))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ValueError(f"{path} cannot be read as FID statistics: {exc}") from None
        other = self._fake if real else self._real
        if other.mean is not None and other.mean.shape[0] != mean.shape[0]:
            raise ValueError(f"{path} has width {mean.shape[0]}, the other statistics have {other.mean.shape[0]}")
        if self.device is None:
            self.device = torch.device("cpu")
        fresh = _RunningMoments()
        fresh.merge(int(count[0]), mean.to(self.device, torch.float64), scatter.to(self.device, torch.float64))
        if real:
            self._real = fresh
        else:
            self._fake = fresh
