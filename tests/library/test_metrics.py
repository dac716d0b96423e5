"""gencore.metrics: Fréchet distance and FID, Inception Score, diversity, precision/recall, the shipped MNIST
classifier, and `gencore eval`."""
import json
import math

import numpy as np
import pytest
import torch

from gencore.cli import main
from gencore.data import mnist_split
from gencore.metrics import (
    FID,
    check_images,
    class_coverage,
    classifier_info,
    diversity_score,
    frechet_distance,
    inception_score,
    load_mnist_classifier,
    precision_recall,
)
from gencore.metrics import scores as scores_module
from gencore.metrics.classifier import classifier_weights_path
from gencore.testing import approx

HAS_WEIGHTS = classifier_weights_path().is_file()
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="classifier weights not trained yet")


def _gaussian_features(n, d, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * scale + shift


def _stats(x):
    return x.mean(0), torch.cov(x.T)


def _identity_fid(**kwargs):
    return FID(lambda x: x, name="identity", **kwargs)


# -- Fréchet distance -----------------------------------------------------------------------------------------------

def test_matches_scipy_sqrtm_on_well_conditioned_stats():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    for seed, d in ((0, 16), (1, 64)):
        m1, s1 = _stats(_gaussian_features(4 * d, d, seed))
        m2, s2 = _stats(_gaussian_features(5 * d, d, seed + 100, shift=0.2, scale=1.3))
        # pytorch-fid's computation: scipy's (non-symmetric) sqrtm of the product, real part.
        covmean = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy()).real
        expected = float(((m1 - m2) ** 2).sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
        assert frechet_distance(m1, s1, m2, s2) == approx(expected, "float64_matrix_sqrt")
        # numpy inputs and float32 inputs are accepted (converted to float64)
        assert frechet_distance(m1.numpy(), s1.numpy(), m2.numpy(), s2.numpy()) == approx(expected, "float64_matrix_sqrt")
        assert frechet_distance(m1.float(), s1.float(), m2.float(), s2.float()) == approx(expected, "float32_rounded_inputs")


def test_closed_form_gaussians():
    # Commuting (diagonal) covariances: Tr (S1 S2)^1/2 = sum sqrt(a_i b_i).
    a, b = torch.tensor([1.0, 4.0, 9.0, 0.25]), torch.tensor([4.0, 1.0, 9.0, 0.0])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, 3.0])
    expected = 1 + 4 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == approx(expected, "float64_short")
    # S2 = c S1: FID = |dmu|^2 + (1 - sqrt c)^2 Tr S1, for any S1 (here a random rank-deficient one).
    x = _gaussian_features(10, 32, 3)
    s1 = torch.cov(x.T)
    assert frechet_distance(mu1.new_zeros(32), s1, mu1.new_zeros(32), 2.25 * s1) == \
        approx(0.25 * s1.trace().item(), torch.float64)
    # Non-commuting 2x2: Tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for the 2x2 product M = S1 S2.
    s1 = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=torch.float64)
    m = s1 @ s2
    tr_sqrt = math.sqrt(m.trace().item() + 2 * math.sqrt(torch.det(m).item()))
    expected = 0.5 + s1.trace().item() + s2.trace().item() - 2 * tr_sqrt
    assert frechet_distance(torch.zeros(2), s1, torch.tensor([0.5, -0.5]), s2) == approx(expected, "float64_short")


def test_rank_deficient_covariances_are_finite_and_exact():
    # Fewer samples than dimensions: both covariances are singular, so is their product (where scipy's sqrtm
    # gives complex results). Independent truth: with centred sample matrices X1, X2, the non-zero eigenvalues of
    # S1 S2 are the squared singular values of X1 X2^T / sqrt((n1-1)(n2-1)), a small well-conditioned matrix.
    d = 96
    x1, x2 = _gaussian_features(20, d, 4), _gaussian_features(30, d, 5, shift=0.3, scale=2.0)
    m1, s1 = _stats(x1)
    m2, s2 = _stats(x2)
    c1, c2 = (x1 - m1).numpy(), (x2 - m2).numpy()
    tr_sqrt = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / math.sqrt(19 * 29)
    expected = float(((m1 - m2) ** 2).sum() + s1.trace() + s2.trace()) - 2 * tr_sqrt
    value = frechet_distance(m1, s1, m2, s2)
    assert math.isfinite(value) and value == approx(expected, torch.float64)
    # Disjoint supports (product exactly 0): Tr sqrt = 0.
    assert frechet_distance(torch.zeros(3), torch.diag(torch.tensor([1.0, 0, 0])), torch.zeros(3),
                            torch.diag(torch.tensor([0, 2.0, 0]))) == approx(3.0, "float64_short")


@pytest.mark.parametrize("n, d", [(500, 32), (20, 128)], ids=["full-rank", "rank-deficient"])
def test_identical_sets_give_zero(n, d):
    x = _gaussian_features(n, d, 6, shift=5.0, scale=10.0)  # a large offset and scale, as network features have
    m, s = _stats(x)
    assert frechet_distance(m, s, m, s) == approx(0.0, "float64_matrix_sqrt")
    fid = _identity_fid()
    fid.update_features(x, real=True)
    fid.update_features(x.flip(0), real=False)
    assert fid.compute() == approx(0.0, "float64_matrix_sqrt")


def test_never_negative():
    for seed in range(5):
        x = _gaussian_features(8, 16, seed)
        m, s = _stats(x)
        assert frechet_distance(m, s, m + 1e-12, s * (1 + 1e-15)) >= 0.0


def test_frechet_bad_input():
    m, s = torch.zeros(4), torch.eye(4)
    with pytest.raises(ValueError, match="different feature widths"):
        frechet_distance(m, s, torch.zeros(5), torch.eye(5))
    with pytest.raises(ValueError, match="sigma2 must have shape"):
        frechet_distance(m, s, m, torch.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(m, s, m, torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(m, s, m, torch.triu(torch.ones(4, 4)))
    with pytest.raises(TypeError):
        frechet_distance([0.0], s, m, s)


# -- FID accumulator ------------------------------------------------------------------------------------------------

def test_fid_independent_of_batching_and_order():
    real, fake = _gaussian_features(600, 24, 7, shift=3.0), _gaussian_features(400, 24, 8, shift=3.2)
    reference = frechet_distance(*_stats(real), *_stats(fake))
    results = []
    for seed, sizes in ((0, [600]), (1, [1, 99, 250, 250]), (2, [7] * 85 + [5])):
        g = torch.Generator().manual_seed(seed)
        fid = _identity_fid()
        real_batches = list(real[torch.randperm(600, generator=g)].split(sizes))
        fake_batches = list(fake[torch.randperm(400, generator=g)].split(37))
        # interleave real and fake updates in a seed-dependent order
        for i in range(max(len(real_batches), len(fake_batches))):
            if i < len(fake_batches):
                fid.update_features(fake_batches[i], real=False)
            if i < len(real_batches):
                fid.update_features(real_batches[i], real=True)
        results.append(fid.compute())
    for value in results:
        assert value == approx(reference, torch.float64)


def test_fid_images_through_extractor_and_batch_size():
    g = torch.Generator().manual_seed(9)
    # A float64 extractor: FID's own result must not depend on the batch size, but a float32 GEMM's does (MKL picks
    # its blocking by the number of rows: 300 vs 64 rows gave features that moved the FID by 2e-9 relative on an
    # Intel Xeon, and not at all on an AMD EPYC).
    proj = torch.randn(784, 16, generator=g, dtype=torch.float64)
    extractor = lambda x: x.flatten(1).double() @ proj  # noqa: E731
    real = torch.rand(300, 1, 28, 28, generator=g) * 2 - 1
    fake = torch.rand(200, 1, 28, 28, generator=g).pow(2) * 2 - 1
    values = []
    for batch_size in (1000, 64):
        fid = FID(extractor, name="proj", batch_size=batch_size)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        values.append(fid.compute())
    assert values[0] == approx(values[1], torch.float64) and values[0] > 0


def test_fid_save_and_load_reference(tmp_path):
    real, fake = _gaussian_features(300, 12, 10), _gaussian_features(300, 12, 11, shift=0.5)
    fid = _identity_fid()
    fid.update_features(real, real=True)
    fid.update_features(fake, real=False)
    value = fid.compute()
    path = tmp_path / "ref.safetensors"
    fid.save_reference(path)
    other = _identity_fid()
    other.load_reference(path)
    other.update_features(fake, real=False)
    assert other.compute() == approx(value, "float64_short")
    assert other.count(real=True) == 300
    other.reset(real=False)  # keep the reference, forget the samples
    assert other.count(real=True) == 300 and other.count(real=False) == 0
    with pytest.raises(ValueError, match="features 'identity'"):
        FID(lambda x: x, name="other-features").load_reference(path)
    with pytest.raises(FileNotFoundError):
        other.load_reference(tmp_path / "missing.safetensors")
    narrow = _identity_fid()
    narrow.update_features(torch.randn(5, 3), real=False)
    with pytest.raises(ValueError, match="width"):
        narrow.load_reference(path)


def test_fid_bad_input():
    fid = _identity_fid()
    fid.update_features(torch.randn(10, 8), real=True)
    with pytest.raises(ValueError, match="width 9"):
        fid.update_features(torch.randn(10, 9), real=False)
    with pytest.raises(ValueError, match="NaN"):
        fid.update_features(torch.full((3, 8), float("nan")), real=False)
    with pytest.raises(ValueError, match="shape"):
        fid.update_features(torch.randn(8), real=False)
    with pytest.raises(TypeError, match="real must be"):
        fid.update_features(torch.randn(3, 8), real="yes")
    fid.update_features(torch.randn(1, 8), real=False)
    with pytest.raises(ValueError, match="at least 2 generated samples"):
        fid.compute()
    with pytest.raises(ValueError, match="at least 2 real samples"):
        _identity_fid().compute()


@pytest.mark.gpu
def test_fid_on_cuda_matches_cpu():
    real, fake = _gaussian_features(300, 16, 12), _gaussian_features(300, 16, 13, shift=0.5)
    values = []
    for device in ("cpu", "cuda"):
        fid = _identity_fid()
        fid.update_features(real.to(device), real=True)
        fid.update_features(fake.to(device), real=False)
        values.append(fid.compute())
    assert values[1] == approx(values[0], torch.float64)


# -- Inception Score ------------------------------------------------------------------------------------------------

def _confident_logits(n, c, seed, margin=30.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    logits[torch.arange(n), torch.arange(n) % c] += margin
    return logits


def test_is_uniform_is_one():
    mean, std = inception_score(torch.full((100, 10), 0.1))
    assert mean == approx(1.0, "float64_short") and std == approx(0.0, "float64_short")
    assert inception_score(torch.zeros(50, 7), splits=5)[0] == approx(1.0, "float64_short")  # uniform logits


@pytest.mark.parametrize("c, n, splits", [(10, 1000, 10), (7, 700, 10), (10, 100, 1)])
def test_is_confident_even_predictions_is_number_of_classes(c, n, splits):
    probs = torch.eye(c, dtype=torch.float64).repeat(n // c, 1)
    mean, std = inception_score(probs, splits=splits)
    assert mean == approx(c, torch.float64) and std == approx(0.0, torch.float64)
    # class-sorted and as logits: the same
    assert inception_score(probs[probs.argmax(1).argsort(stable=True)] * 50, splits=splits, inputs="logits")[0] == \
        approx(c, torch.float64)


def test_is_order_independent():
    logits = _confident_logits(1000, 10, 0, margin=4.0)
    base = inception_score(logits, splits=10)
    class_sorted = logits[logits.argmax(1).argsort(stable=True)]
    assert inception_score(class_sorted, splits=10) == base  # bit for bit
    for seed in range(3):
        perm = torch.randperm(1000, generator=torch.Generator().manual_seed(seed))
        assert inception_score(logits[perm], splits=10) == base
    # contiguous blocks of class-sorted samples would score about 1 per split; our splits mix the classes, so the
    # per-split scores are close to the whole-set score (slightly below: p(y) of a split is noisier)
    whole = inception_score(logits, splits=1)[0]
    assert 0.9 * whole < base[0] <= whole and whole > 3


def test_is_splits_as_defined():
    logits = _confident_logits(103, 10, 1, margin=3.0)
    probs = torch.softmax(logits, 1)
    # splits=1 is the plain definition on the whole set
    kl = (probs * (probs.log() - probs.mean(0).log())).sum(1)
    assert inception_score(logits, splits=1) == (approx(kl.mean().exp().item(), "float64_short"), 0.0)
    # the splits partition the samples, sizes differ by at most one, and mean/std (ddof=0) are over the splits
    parts = scores_module._split_assignment(probs.float(), 10)
    assert sorted(torch.cat(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} == {10, 11}
    per_split = []
    for index in parts:
        p = probs[index]
        per_split.append((p * (p.log() - p.mean(0).log())).sum(1).mean().exp().item())
    mean, std = inception_score(logits, splits=10)
    assert mean == approx(np.mean(per_split), "float64_short") and std == approx(np.std(per_split), torch.float64)
    # one sample per split: each split's p(y) is that sample's p(y|x), so every score is 1
    assert inception_score(logits[:20], splits=20) == (approx(1.0, "float64_short"), approx(0.0, "float64_short"))
    # probabilities and logits of the same predictions agree (auto-detected or explicit)
    assert inception_score(probs, splits=4)[0] == approx(inception_score(logits, splits=4)[0], torch.float64)


def test_is_bad_input():
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.randn(5, 10), splits=6)
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.randn(5, 10), splits=0)
    with pytest.raises(ValueError, match="NaN"):
        inception_score(torch.tensor([[0.5, float("nan")], [0.5, 0.5]]), splits=1)
    with pytest.raises(ValueError, match="2 dimensions"):
        inception_score(torch.randn(10), splits=1)
    with pytest.raises(ValueError, match="not probability vectors"):
        inception_score(torch.randn(4, 3), splits=1, inputs="probs")
    with pytest.raises(ValueError, match="2 classes"):
        inception_score(torch.ones(4, 1), splits=1)


# -- diversity ------------------------------------------------------------------------------------------------------

def test_diversity_is_mean_pairwise_distance(monkeypatch):
    x = torch.rand(150, 1, 28, 28) * 2 - 1
    expected = torch.pdist(x.flatten(1).double()).mean().item()
    assert diversity_score(x) == approx(expected, torch.float64)
    monkeypatch.setattr(scores_module, "_BLOCK_ELEMENTS", 1000)  # many small blocks: the same value
    assert diversity_score(x) == approx(expected, torch.float64)
    assert diversity_score(x, max_samples=20) == approx(torch.pdist(x[:20].flatten(1).double()).mean().item(), torch.float64)
    assert diversity_score(x[:1].repeat(10, 1, 1, 1)) == approx(0.0, "float32_reordered")  # a collapsed generator


def test_diversity_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        diversity_score(torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        diversity_score(torch.tensor([[0.0], [float("nan")]]))


# -- precision / recall ---------------------------------------------------------------------------------------------

def _brute_force_pr(real, fake, k):
    def radii(x):
        return torch.cdist(x, x).sort(1).values[:, k]  # column 0 is the point itself

    def inside(q, c, r):
        return (torch.cdist(q, c) <= r.unsqueeze(0)).any(1).double().mean().item()

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_matches_brute_force(monkeypatch):
    real = _gaussian_features(300, 8, 14)
    fake = _gaussian_features(250, 8, 15, shift=0.4, scale=0.7)
    expected = _brute_force_pr(real, fake, 3)
    got = precision_recall(real, fake, k=3)
    assert got == approx(expected, "float64_short")
    assert 0 < got.precision < 1 and 0 < got.recall < 1
    monkeypatch.setattr(scores_module, "_BLOCK_ELEMENTS", 8192)  # ~30 row blocks: identical result
    assert precision_recall(real, fake, k=3) == got
    assert precision_recall(real, fake, k=5) == approx(_brute_force_pr(real, fake, 5), "float64_short")


def test_precision_recall_limits():
    real = _gaussian_features(200, 6, 16)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    # a collapsed generator: realistic (precision 1) but covering nothing (recall ~0)
    collapsed = real[:1].repeat(50, 1)
    pr = precision_recall(real, collapsed)
    assert pr.precision == 1.0 and pr.recall < 0.05


def test_precision_recall_bad_input():
    with pytest.raises(ValueError, match="different widths"):
        precision_recall(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(torch.randn(10, 4), torch.randn(3, 4), k=3)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(torch.randn(10, 4), torch.full((10, 4), float("nan")))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(torch.randn(10, 4), torch.randn(10, 4), k=0)


# -- the shipped classifier -----------------------------------------------------------------------------------------

def test_check_images_rejects_bad_images():
    good = torch.rand(2, 1, 28, 28) * 2 - 1
    assert check_images(good) is good
    with pytest.raises(ValueError, match=r"shape \(N, 1, 28, 28\)"):
        check_images(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match=r"shape \(N, 1, 28, 28\)"):
        check_images(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="0..255"):
        check_images(torch.full((2, 1, 28, 28), 255.0))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        check_images(torch.full((2, 1, 28, 28), -1.5))
    with pytest.raises(ValueError, match="NaN"):
        check_images(torch.full((2, 1, 28, 28), float("nan")))
    with pytest.raises(TypeError, match="mnist_to_float"):
        check_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        check_images(torch.zeros(0, 1, 28, 28))


@needs_weights
def test_classifier_interface():
    model = load_mnist_classifier()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model(x).shape == (3, 10) and model.features(x).shape == (3, 128)
    torch.testing.assert_close(model.head(model.features(x)), model(x))
    info = classifier_info()
    assert info["seed"] is not None and info["epochs"] > 0 and info["heldout_accuracy"] >= 0.975
    assert classifier_weights_path().stat().st_size < 1_000_000


@needs_weights
def test_classifier_heldout_accuracy(mnist_dir):
    from gencore.data import mnist_split, mnist_to_float

    held_out = mnist_split("reference", mnist_dir)
    model = load_mnist_classifier()
    with torch.no_grad():
        predictions = torch.cat([model(mnist_to_float(held_out.images[i:i + 500])).argmax(1)
                                 for i in range(0, 2000, 500)])
    accuracy = (predictions == held_out.labels).double().mean().item()
    assert accuracy >= 0.975
    assert accuracy == pytest.approx(classifier_info()["heldout_accuracy"], abs=0.002)  # the recorded number, as printed (3 decimals) and rounded


@needs_weights
def test_fid_with_classifier_features(mnist_dir):
    from gencore.data import mnist_split, mnist_to_float

    train = mnist_to_float(mnist_split("train", mnist_dir).images[:1000])
    reference = mnist_to_float(mnist_split("reference", mnist_dir).images)
    fid = FID()
    fid.update(reference, real=True)
    fid.update(train, real=False)
    real_vs_real = fid.compute()
    fid.reset(real=False)
    fid.update(torch.rand(1000, 1, 28, 28) * 2 - 1, real=False)
    assert real_vs_real < fid.compute() / 20  # digits against digits vs. noise against digits
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        fid.update(train * 127.5 + 127.5, real=False)
    with pytest.raises(ValueError, match="shape"):
        fid.update(train[:, 0], real=False)


def test_classifier_weights_record_matches_file():
    if not HAS_WEIGHTS:
        pytest.skip("classifier weights not trained yet")
    import hashlib

    assert hashlib.sha256(classifier_weights_path().read_bytes()).hexdigest() == classifier_info()["sha256"]


def test_inception_needs_torchvision_and_local_weights(tmp_path):
    from gencore.metrics import load_inception_v3

    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            load_inception_v3(tmp_path / "inception.pth")
    else:
        with pytest.raises(FileNotFoundError, match="does not download"):
            load_inception_v3(tmp_path / "inception.pth")


# -- class coverage -------------------------------------------------------------------------------------------------

def test_class_coverage_exact():
    one_class = torch.nn.functional.one_hot(torch.full((50,), 3), 10).double()
    cov = class_coverage(one_class)
    assert cov.counts == [0, 0, 0, 50, 0, 0, 0, 0, 0, 0] and cov.present == 1
    assert cov.rare == [0, 1, 2, 4, 5, 6, 7, 8, 9] and cov.collapsed
    assert cov.kl_from_uniform == approx(math.log(10), "float64_short") and cov.effective_classes == approx(1, "float64_short")
    even = torch.nn.functional.one_hot(torch.arange(50) % 10, 10).double() * 5  # logits
    cov = class_coverage(even)
    assert cov.counts == [5] * 10 and cov.present == 10 and cov.rare == [] and not cov.collapsed
    assert cov.kl_from_uniform == approx(0, "float64_short") and cov.effective_classes == approx(10, "float64_short")
    # two classes, 30 / 20 of 50: KL = log 10 - H(0.6, 0.4)
    two = torch.nn.functional.one_hot(torch.tensor([1] * 30 + [7] * 20), 10).double()
    expected = math.log(10) + 0.6 * math.log(0.6) + 0.4 * math.log(0.4)
    assert class_coverage(two).kl_from_uniform == approx(expected, "float64_short")
    # a class under a fifth of its even share (1,000 samples: under 20 of 100) is rare; 20 is not
    counts = [20, 19] + [120] * 8 + [41]
    logits = torch.nn.functional.one_hot(torch.cat([torch.full((c,), k) for k, c in enumerate(counts[:10])]), 10)
    assert class_coverage(logits.double()).rare == [1]


# -- gencore eval -----------------------------------------------------------------------------------------------------

@needs_weights
def test_eval_command(mnist_dir, tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    monkeypatch.setenv("GENCORE_MNIST_DIR", str(mnist_dir))
    fake = mnist_split("train", mnist_dir).images[:500]
    save_file({"images": fake.contiguous()}, str(tmp_path / "fake.safetensors"))
    out_json = tmp_path / "m.json"
    assert main(["eval", "--fake", str(tmp_path / "fake.safetensors"), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    for name in ("FID", "IS", "diversity", "precision", "recall"):
        assert name in printed
    results = json.loads(out_json.read_text())
    assert results["n_real"] == 2000 and results["n_fake"] == 500
    # real digits against real digits (measured: FID 0.49, precision 0.76, recall 0.83, IS 8.0; noise: FID 864,
    # precision 0, recall 0, IS 1)
    assert results["fid"] < 2 and results["precision"] > 0.6 and results["recall"] > 0.6
    assert results["inception_score"] > 6
    # real digits: the classifier is confident and every digit appears
    assert results["confidence"] > 0.95 and min(results["class_counts"]) > 0 and sum(results["class_counts"]) == 500
    assert "confidence" in printed and "classes    10 of 10 present" in printed
    assert not results["collapsed"] and results["warning"] is None and results["classes_present"] == 10

    # a folder of PNGs and an .npz give the same numbers as the tensor file
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(fake[:50]):
        Image.fromarray(image.numpy()).save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "fake.npz", fake[:50].numpy())
    for spec in (str(folder), str(tmp_path / "fake.npz")):
        assert main(["eval", "--real", str(tmp_path / "fake.npz"), "--fake", spec, "--json", str(out_json)]) == 0
        assert json.loads(out_json.read_text())["fid"] == approx(0.0, "float64_matrix_sqrt")


def test_eval_command_errors(tmp_path, capsys):

    assert main(["eval", "--fake", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.full((10, 28, 28), 3.0, dtype=np.float32))
    assert main(["eval", "--real", str(tmp_path / "bad.npy"), "--fake", str(tmp_path / "bad.npy")]) == 2
    assert "[-1, 1]" in capsys.readouterr().err
    np.save(tmp_path / "shape.npy", np.zeros((10, 32, 32), dtype=np.uint8))
    assert main(["eval", "--real", str(tmp_path / "shape.npy"), "--fake", str(tmp_path / "shape.npy")]) == 2
    assert "shape" in capsys.readouterr().err


@needs_weights
def test_eval_checkpoint_uses_sampler(tmp_path, monkeypatch, capsys):

    calls = {}

    def sample_from_checkpoint(checkpoint_dir, n, *, batch_size, device, generator, sampler, steps, eta,
                               guidance_scale, ema, optimize):
        calls.update(checkpoint_dir=checkpoint_dir, n=n, batch_size=batch_size, device=device, sampler=sampler,
                     steps=steps, eta=eta, guidance_scale=guidance_scale, ema=ema, optimize=optimize)
        return torch.rand(n, 1, 28, 28, generator=generator) * 2 - 1

    monkeypatch.setattr("gencore.commands.evaluate.sample_from_checkpoint", sample_from_checkpoint)
    monkeypatch.setattr("gencore.commands.evaluate.read_config",
                        lambda path: {"kind": "ddpm", "step": 7, "conditional": True, "trainer": {"cfg_dropout": 0.1},
                                      "data": {"image_shape": [1, 28, 28], "num_classes": 10}})
    np.save(tmp_path / "real.npy", (np.random.default_rng(0).random((40, 28, 28)) * 255).astype(np.uint8))
    assert main(["eval", "--real", str(tmp_path / "real.npy"), "--checkpoint", "runs/x", "--n", "30",
                 "--batch-size", "16", "--device", "cpu", "--sampler", "ddpm", "--steps", "100",
                 "--guidance-scale", "2.5", "--no-ema"]) == 0
    assert calls == {"checkpoint_dir": "runs/x", "n": 30, "batch_size": 16, "device": "cpu", "sampler": "ddpm",
                     "steps": 100, "eta": 0.0, "guidance_scale": 2.5, "ema": False, "optimize": False}
    assert "30 samples of runs/x (ddpm at step 7; seed 0; raw weights, not the EMA; ddpm 100 steps" in \
        capsys.readouterr().out


@needs_weights
def test_eval_warns_when_every_sample_is_one_class(tmp_path, capsys):
    """The exact oracle of mode collapse: 200 copies of one image. The classifier reads all 200 as the same digit
    c, so the class counts are exactly [200 at c], the Inception Score is exactly 1 (every split's p(y) equals each
    p(y|x)), the KL from uniform is log 10 and eval warns; the confidence alone would have rated it highly."""
    real = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    real[:, 4:24, 12:16] = 255  # something digit-like
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", np.repeat(real[:1], 200, axis=0))
    assert main(["eval", "--real", str(tmp_path / "real.npy"), "--fake", str(tmp_path / "fake.npy"),
                 "--json", str(tmp_path / "m.json"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    results = json.loads((tmp_path / "m.json").read_text())
    digit = int(np.argmax(results["class_counts"]))
    assert results["class_counts"] == [200 if k == digit else 0 for k in range(10)]
    assert results["classes_present"] == 1 and results["collapsed"]
    assert results["inception_score"] == approx(1.0, torch.float64)
    assert results["class_kl_from_uniform"] == approx(math.log(10), torch.float64)
    assert results["effective_classes"] == approx(1.0, "float64_short")
    assert "classes    1 of 10 present" in out
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "9 of 10 are rare or absent" in warning[0]
    assert f"the others: {digit}: 200." in warning[0]
    assert results["warning"] == warning[0].split("warning: ", 1)[1]


@needs_weights
def test_eval_of_real_digits_of_one_class(mnist_dir, tmp_path, capsys):
    """500 real MNIST images of one digit: legible (high confidence) yet collapsed: warned, IS near 1."""
    data = mnist_split("train", mnist_dir)
    eights = data.images[data.labels == 8][:500]
    np.save(tmp_path / "eights.npy", eights.numpy())
    assert main(["eval", "--fake", str(tmp_path / "eights.npy"), "--mnist-dir", str(mnist_dir),
                 "--json", str(tmp_path / "m.json")]) == 0
    _, err = capsys.readouterr()
    results = json.loads((tmp_path / "m.json").read_text())
    assert results["confidence"] > 0.9  # what made such a model look excellent
    assert results["inception_score"] < 1.5 and results["class_kl_from_uniform"] > 2
    assert results["collapsed"] and "warning" in err and "8: " in err
