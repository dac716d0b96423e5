"""Metrics for generated images: exact FID, Inception Score, diversity, k-NN precision/recall, and the MNIST
classifier that ships with gencore as their feature extractor (offline; no download ever happens at import).

    from gencore.metrics import FID, inception_score, load_mnist_classifier
    clf = load_mnist_classifier()              # (N, 1, 28, 28) in [-1, 1] -> (N, 10) logits; .features -> (N, 128)
    fid = FID()                                # streaming, float64, classifier features by default
    fid.update(real_images, real=True); fid.update(fake_images, real=False); fid.compute()
    inception_score(clf(fake_images), splits=10)   # (mean, std)
"""
from .classifier import MnistClassifier, check_images, classifier_info, load_mnist_classifier
from .fid import FID, FeatureStatistics, frechet_distance, sqrtm_psd
from .inception import load_inception_v3
from .scores import ClassCoverage, PrecisionRecall, class_coverage, diversity_score, inception_score, precision_recall

__all__ = [
    "ClassCoverage",
    "FID",
    "FeatureStatistics",
    "MnistClassifier",
    "PrecisionRecall",
    "check_images",
    "class_coverage",
    "classifier_info",
    "diversity_score",
    "frechet_distance",
    "inception_score",
    "load_inception_v3",
    "load_mnist_classifier",
    "precision_recall",
    "sqrtm_psd",
]
