"""Train the MNIST classifier that gencore.metrics ships (FID features, Inception-Score probabilities).

    python scripts/train_mnist_classifier.py --data ../shared/data/mnist

It trains on the first 8,000 images of the MNIST test file only (the project's training part, see
gencore.data.mnist_split) and measures accuracy once, at the end, on the last 2,000 (the held-out reference set:
never used for training, early stopping or any choice of the recipe). It writes, atomically:

    gencore/metrics/weights/mnist_classifier.safetensors   float32 state_dict of gencore.metrics.MnistClassifier
    gencore/metrics/weights/mnist_classifier.json          seed, epochs, recipe, held-out accuracy, sha256, versions

Determinism: a fixed seed drives initialisation, shuffling and augmentation (one torch.Generator each), and
torch.use_deterministic_algorithms(True) with a fixed thread count (2 by default) makes the run repeatable on the
same machine and torch build; other CPUs may differ in the last bits of float32 sums, hence in the last digit of the
accuracy.

Recipe: AdamW (lr 2e-3, weight decay 5e-4), batch 128, one warm-up epoch then cosine decay, 8 epochs, light
augmentation (random rotation +-10 degrees, scale 0.9..1.1, shift +-2 pixels): 8,000 digits are few, and
augmentation is what lets a CNN generalise from them. The recipe was not tuned on the held-out images: the only
held-out number seen before the final run was one 2-epoch smoke test of a 4x larger network (97.9%); the network
was then made smaller and the epochs fewer (8: about 70 s of CPU time each) so that training takes minutes on 2
CPU cores, even shared ones.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gencore.data import mnist_split, mnist_to_float  # noqa: E402
from gencore.metrics.classifier import MnistClassifier  # noqa: E402

OUT_DIR = ROOT / "gencore" / "metrics" / "weights"


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift of images in [-1, 1]; new pixels are background (-1)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)  # 2 pixels in [-1, 1] grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros: sample (x + 1) so that padding is the -1 background after shifting back.
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(images[i:i + 500]).argmax(1) == labels[i:i + 500]).sum())
                  for i in range(0, len(images), 500))
    return correct / len(images)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; package data must be readable by everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(OUT_DIR), help="folder for mnist_classifier.safetensors/.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    init_gen = torch.Generator().manual_seed(args.seed)
    shuffle_gen = torch.Generator().manual_seed(args.seed + 1)
    augment_gen = torch.Generator().manual_seed(args.seed + 2)

    train = mnist_split("train", args.data, verify=True)
    held_out = mnist_split("reference", args.data, verify=True)
    x_train, y_train = mnist_to_float(train.images), train.labels
    x_test, y_test = mnist_to_float(held_out.images), held_out.labels

    model = MnistClassifier()
    with torch.no_grad():  # initialise from our own generator, so the seed alone fixes the weights
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=init_gen) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, min(steps_per_epoch, args.epochs * steps_per_epoch - 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) /
                                                                                       max(1, total - warmup)))))
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=shuffle_gen)
        loss_sum, seen = 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            x, y = augment(x_train[idx], augment_gen), y_train[idx]
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  train loss {loss_sum / seen:.4f}  "
              f"({time.time() - start:.0f} s)", flush=True)

    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, x_test, y_test)
    print(f"accuracy: {train_acc:.4f} on the 8,000 training images, {test_acc:.4f} on the held-out 2,000")

    from safetensors.torch import save

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"model": "gencore.metrics.MnistClassifier", "seed": str(args.seed)})
    atomic_write(out / "mnist_classifier.safetensors", blob)
    record = {
        "model": "gencore.metrics.MnistClassifier",
        "trained_on": "MNIST test file (t10k), images 0..7999 (the project's training part)",
        "evaluated_on": "MNIST test file (t10k), images 8000..9999 (held out, never used in training)",
        "heldout_accuracy": round(test_acc, 5),
        "heldout_correct": round(test_acc * len(x_test)),
        "train_accuracy": round(train_acc, 5),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.weight_decay}), 1 warm-up epoch + cosine",
        "augmentation": "rotation +-10 deg, scale 0.9..1.1, shift +-2 px (bilinear, background -1)",
        "threads": args.threads,
        "train_seconds": round(time.time() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "script": "scripts/train_mnist_classifier.py",
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write(out / "mnist_classifier.json", (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {out / 'mnist_classifier.safetensors'} ({len(blob) / 1e6:.2f} MB), sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
