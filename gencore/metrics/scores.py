"""Inception Score, class coverage, diversity score, and k-NN precision / recall.

All take plain tensors (class logits or probabilities, images or features), so they work with any feature
extractor; gencore.metrics.load_mnist_classifier() supplies logits and features for digits.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["ClassCoverage", "PrecisionRecall", "class_coverage", "diversity_score", "inception_score",
           "precision_recall"]

# Pairwise-distance blocks are limited to about this many float64 entries (2^23 = 64 MiB; peak memory is about two
# blocks), so that 10,000 x 10,000 distance matrices are computed in strips rather than all at once.
_BLOCK_ELEMENTS = 1 << 23


def _tensor(name: str, x, *, dims: int | None = None, min_rows: int = 1) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        x = x.to(torch.float32) if x.dtype in (torch.uint8, torch.int32, torch.int64) else x
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")
    if x.dim() == 0 or x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


# -- Inception Score ------------------------------------------------------------------------------------------------

def _row_keys(rows: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash of each row's bit pattern (as float64; int64 (N,)): a key that depends only on the row's content.

    Each element's bits are mixed with its column index (splitmix64-style multiply/xor-shift; int64 products wrap
    modulo 2^64 in torch), then the columns are summed, so equal rows get equal keys wherever they are and the key
    of a one-hot-like row is unrelated to its class.
    """
    bits = rows.to(torch.float64).contiguous().view(torch.int64)
    col = torch.arange(rows.shape[1], dtype=torch.int64, device=rows.device)
    h = bits ^ (col * -7046029254386353131)  # 0x9E3779B97F4A7C15, the golden-ratio increment of splitmix64
    # splitmix64's finaliser constants 0xBF58476D1CE4E5B9 and 0x94D049BB133111EB, as signed int64
    for shift, mult in ((30, -4658895280553007687), (27, -7723592293110705685)):
        h = (h ^ ((h >> shift) & ((1 << (64 - shift)) - 1))) * mult
    h = h ^ ((h >> 31) & ((1 << 33) - 1))
    return h.sum(dim=1)


def _split_assignment(rows: torch.Tensor, splits: int) -> list[torch.Tensor]:
    """Indices of the rows in each split, a function of the multiset of rows only (not of their input order).

    The rows are sorted by a content hash (a pseudo-random order unrelated to the class), then dealt round-robin:
    sorted position j goes to split j mod `splits`. Dealing rather than cutting the sorted order into blocks matters
    for repeated rows: identical rows get identical keys and sit next to each other after sorting, and dealing
    spreads them over the splits instead of putting them all in one (which would make, e.g., one-hot predictions
    repeated per class score 1 in every split). Split sizes differ by at most one.
    """
    order = torch.sort(_row_keys(rows), stable=True).indices
    return [order[i::splits] for i in range(splits)]


def inception_score(logits_or_probs, splits: int = 10, *, inputs: str = "auto") -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) as (mean, std) over `splits` disjoint splits.

    Parameters:
        logits_or_probs: (N, C) class logits or probabilities (torch or numpy, any float dtype, any device),
            one row per generated sample; computed in float64.
        splits: number of splits (1 <= splits <= N). Each split's p(y) is the mean of its rows' p(y|x).
        inputs: "logits", "probs", or "auto" (probabilities if every row is non-negative and sums to 1 within
            1e-4, else logits).

    Returns:
        (mean, std) of the per-split scores; std with ddof=0 (the population std, as numpy's default), the
        convention of the original implementation (Salimans et al. 2016) and of torch-fidelity.

    Convention:
        Each split's score is exp(mean over its rows of sum_y p(y|x) (log p(y|x) - log p(y))), and the result is
        the mean and population std of the split scores, as in the original code and torch-fidelity. What differs
        between libraries is which samples share a split. The original cuts the samples into contiguous blocks in
        their given order, so class-sorted samples score about 1 per split; torch-fidelity shuffles with a fixed
        seed (2020) first, which fixes the class-sorted case but still depends on the input order. gencore sorts
        the rows by a hash of their content and deals them round-robin into the splits (see `_split_assignment`):
        every split is a class-independent mix, split sizes differ by at most one, and the result is exactly (bit
        for bit) the same for every permutation of the same samples. With splits=1 all conventions agree exactly;
        with more splits gencore's numbers differ from torch-fidelity's only through the random split membership.

    Bounds: 1 <= IS <= C; 1 for identical predictions (e.g. uniform), C for confident predictions spread evenly
    over the C classes.
    """
    x = _tensor("logits_or_probs", logits_or_probs, dims=2, min_rows=1)
    n, c = x.shape
    if c < 2:
        raise ValueError(f"logits_or_probs needs at least 2 classes, got shape {tuple(x.shape)}")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= n:
        raise ValueError(f"splits must be an int in 1..N={n}, got {splits!r}")
    if inputs not in ("auto", "logits", "probs"):
        raise ValueError(f"inputs must be 'auto', 'logits' or 'probs', got {inputs!r}")
    x64 = x.to(torch.float64)
    is_probs = bool((x64 >= 0).all()) and bool(((x64.sum(1) - 1).abs() <= 1e-4).all())
    if inputs == "probs" and not is_probs:
        raise ValueError("inputs='probs' but the rows are not probability vectors (non-negative, summing to 1)")
    if inputs == "probs" or (inputs == "auto" and is_probs):
        probs = x64 / x64.sum(1, keepdim=True)
        log_probs = torch.where(probs > 0, probs.clamp(min=1e-300).log(), torch.zeros_like(probs))
    else:
        log_probs = torch.log_softmax(x64, dim=1)
        probs = log_probs.exp()
    scores = []
    # Split by the probabilities rounded to float32, not the raw input: the same predictions given as logits or as
    # probabilities (equal up to float64 rounding) then land in the same splits.
    for index in _split_assignment(probs.to(torch.float32), splits):
        p, log_p = probs[index], log_probs[index]
        log_marginal = p.mean(0).clamp(min=1e-300).log()
        kl = (p * (log_p - log_marginal)).sum(1)  # 0 * log 0 terms are 0: p = 0 multiplies a finite number
        scores.append(float(kl.mean().exp()))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())


# -- class coverage -------------------------------------------------------------------------------------------------

class ClassCoverage(NamedTuple):
    """How generated samples spread over a classifier's classes (see class_coverage)."""
    counts: list[int]           # samples per class (the classifier's most likely class of each)
    present: int                # classes read at least once
    rare: list[int]             # classes read less than a fifth as often as an even spread would
    kl_from_uniform: float      # KL(class histogram || uniform) in nats: 0 even, log C for a single class
    effective_classes: float    # exp(entropy of the histogram): C when even, 1 for a single class

    @property
    def collapsed(self) -> bool:
        """Some class is missing or rare: a sign of mode collapse (or of too few samples to tell)."""
        return bool(self.rare)


def class_coverage(logits_or_probs) -> ClassCoverage:
    """Which classes the samples are read as, from (N, C) class logits or probabilities (one row per sample).

    A sampler that draws one class well has a confident classifier reading (mean max-softmax near 1) yet covers
    one class: its counts show it, its KL from uniform is log C and its effective number of classes is 1. A class
    counts as rare below N / (5 C) samples (with 1,000 samples of 10 classes: fewer than 20 where an even spread has
    100), so that the sampling noise of an even spread does not mark a class rare once N / C is about 20 or more.
    """
    x = _tensor("logits_or_probs", logits_or_probs, dims=2, min_rows=1)
    n, c = x.shape
    counts = torch.bincount(x.argmax(dim=1), minlength=c).tolist()
    share = torch.tensor(counts, dtype=torch.float64) / n
    nonzero = share[share > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    rare = [k for k, count in enumerate(counts) if count * 5 * c < n]
    return ClassCoverage(counts=counts, present=sum(1 for v in counts if v), rare=rare,
                         kl_from_uniform=max(0.0, float(np.log(c)) - entropy), effective_classes=float(np.exp(entropy)))


# -- distances ------------------------------------------------------------------------------------------------------

def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|² (float64) via |a|² + |b|² - 2 a·b, clamped at 0 (rounding can make it slightly negative)."""
    d = a @ b.T  # one block-sized allocation, then in-place updates
    return d.mul_(-2).add_((a * a).sum(1, keepdim=True)).add_(b_sq.unsqueeze(0)).clamp_(min=0)


def _rows_per_block(n_cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_cols))


def diversity_score(images, *, max_samples: int | None = None) -> float:
    """Mean Euclidean distance between all pairs of distinct samples: (2 / (N (N-1))) sum_{i<j} |x_i - x_j|.

    Parameters:
        images: (N, ...) tensor or array, N >= 2 (images, or features); each sample is flattened. For images in
            [-1, 1] of shape (1, 28, 28) the distance is in those pixel units (range 0..56).
        max_samples: if given and N is larger, use the first `max_samples` samples (the pair count grows as N²).

    Returns a float. Higher means more varied samples; a collapsed generator scores near 0. Computed in float64,
    in blocks of rows, so 10,000 samples need ~128 MiB at a time; 10,000 MNIST images take
    ~160 GFLOP (seconds to a minute on a CPU).
    """
    x = _tensor("images", images, min_rows=2)
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 2:
            raise ValueError(f"max_samples must be an int >= 2, got {max_samples!r}")
        x = x[:max_samples]
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    n = x.shape[0]
    sq = (x * x).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = _rows_per_block(n)
    for start in range(0, n, step):
        d = _squared_distances(x[start:start + step], x, sq)
        rows = torch.arange(start, min(start + step, n), device=x.device)
        d[rows - start, rows] = 0  # the self-distance is exactly 0, not a rounding residue
        total += d.sqrt_().sum()
    return float(total / (n * (n - 1)))  # each unordered pair was counted twice


# -- precision / recall ---------------------------------------------------------------------------------------------

class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance from each row of x to its k-th nearest other row (float64 (N,))."""
    n = x.shape[0]
    sq = (x * x).sum(1)
    radii = torch.empty(n, dtype=torch.float64, device=x.device)
    step = _rows_per_block(n)
    for start in range(0, n, step):
        d = _squared_distances(x[start:start + step], x, sq)
        rows = torch.arange(start, min(start + step, n), device=x.device)
        d[rows - start, rows] = 0
        # k + 1 smallest including the point itself (distance 0); the largest of them is the k-th neighbour.
        radii[start:start + step] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _fraction_inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of query rows within radius of at least one centre (|q - c|² <= r_c²)."""
    sq = (centres * centres).sum(1)
    inside = 0
    step = _rows_per_block(centres.shape[0])
    for start in range(0, queries.shape[0], step):
        d = _squared_distances(queries[start:start + step], centres, sq)
        inside += int((d <= radii.unsqueeze(0)).any(1).sum())
    return inside / queries.shape[0]


def precision_recall(real_features, fake_features, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-nearest-neighbour manifolds.

    The real manifold is the union of balls around each real feature vector with radius the distance to its k-th
    nearest real neighbour; precision is the fraction of generated samples inside it (are the samples realistic?).
    Recall swaps the roles: the fraction of real samples inside the generated manifold (is the real variety
    covered?). Distances are Euclidean, computed in float64 in blocks of rows (10,000 x 10,000 needs ~128 MiB at a
    time); a point on a ball's boundary counts as inside.

    Parameters:
        real_features: (N_real, D); fake_features: (N_fake, D); same D, both with more than k rows, finite.
        k: neighbourhood size (3, as in the paper).

    Returns PrecisionRecall(precision, recall), floats in [0, 1].
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    real = _tensor("real_features", real_features, dims=2, min_rows=k + 1)
    fake = _tensor("fake_features", fake_features, dims=2, min_rows=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_features and fake_features have different widths: {real.shape[1]} and "
                         f"{fake.shape[1]}")
    real = real.to(torch.float64)
    fake = fake.to(device=real.device, dtype=torch.float64)
    precision = _fraction_inside(fake, real, _knn_radii(real, k))
    recall = _fraction_inside(real, fake, _knn_radii(fake, k))
    return PrecisionRecall(precision, recall)
