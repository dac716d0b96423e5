"""MNIST loader: IDX parsing and its checks, checksum-verified download (never over the network here), the
project's 8,000 / 2,000 split and the Dataset's scaling."""
import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch

from gencore.data import MNIST, MnistDataError, download_mnist, load_mnist, mnist_split, mnist_to_float
from gencore.data import mnist as mnist_module

# Facts about the MNIST test file (from ../shared/data/mnist/README.md), checked against what the loader returns.
LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MEAN_PIXEL = 33.79


def _idx_bytes(kind: str, array: np.ndarray, magic: int | None = None) -> bytes:
    header = (magic if magic is not None else (0x803 if kind == "images" else 0x801)).to_bytes(4, "big")
    header += len(array).to_bytes(4, "big")
    if kind == "images":
        header += array.shape[1].to_bytes(4, "big") + array.shape[2].to_bytes(4, "big")
    return header + array.astype(np.uint8).tobytes()


def _write(path, data: bytes, compress: bool = True):
    if compress:
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_load_real_files(mnist_dir):
    data = load_mnist(mnist_dir, verify=True)
    assert data.images.shape == (10000, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (10000,) and data.labels.dtype == torch.int64
    assert data.labels.bincount().tolist() == LABEL_COUNTS
    assert abs(data.images.double().mean().item() - MEAN_PIXEL) < 0.005


def test_split_convention(mnist_dir):
    full = load_mnist(mnist_dir)
    train, ref = mnist_split("train", mnist_dir), mnist_split("reference", mnist_dir)
    assert len(train.images) == 8000 and len(ref.images) == 2000
    assert torch.equal(train.images, full.images[:8000]) and torch.equal(ref.images, full.images[8000:])
    assert torch.equal(torch.cat([train.labels, ref.labels]), full.labels)
    assert torch.equal(mnist_split("all", mnist_dir).images, full.images)
    with pytest.raises(ValueError, match="part"):
        mnist_split("test", mnist_dir)


def test_dataset_scaling(mnist_dir):
    ds = MNIST(mnist_dir, part="reference")
    assert len(ds) == 2000
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and isinstance(label, int)
    raw = mnist_split("reference", mnist_dir)
    assert label == int(raw.labels[0])
    torch.testing.assert_close(image[0], raw.images[0].float() / 127.5 - 1)
    assert ds.images.min() == -1 and ds.images.max() == 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch[0].shape == (5, 1, 28, 28) and batch[1].shape == (5,)


def test_raw_and_gz_files_read_the_same(mnist_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mnist_dir / f"{name}.gz") as f:
            (tmp_path / name).write_bytes(f.read())
    a, b = load_mnist(tmp_path, verify=True), load_mnist(mnist_dir)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


# -- errors: synthetic files, so these run everywhere ---------------------------------------------------------------

@pytest.fixture()
def fake_pair(tmp_path):
    """A valid-looking 10,000-image pair of IDX files (not real MNIST: fails only the checksum)."""
    rng = np.random.default_rng(0)
    images = np.zeros((10000, 28, 28), dtype=np.uint8)  # mostly blank: quick to gzip
    images[:200] = rng.integers(0, 256, (200, 28, 28))
    labels = rng.integers(0, 10, 10000)
    _write(tmp_path / "t10k-images-idx3-ubyte.gz", _idx_bytes("images", images))
    _write(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx_bytes("labels", labels))
    return tmp_path, images, labels


def test_synthetic_pair_loads_and_fails_checksum(fake_pair):
    folder, images, labels = fake_pair
    data = load_mnist(folder)
    assert np.array_equal(data.images.numpy(), images) and np.array_equal(data.labels.numpy(), labels)
    with pytest.raises(MnistDataError, match="SHA-256"):
        load_mnist(folder, verify=True)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz.*download=True"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError):
        mnist_module.read_idx(tmp_path / "nope.gz", "images")


@pytest.mark.parametrize("damage, match", [
    ("truncate", "truncated"),
    ("swap_magic", "magic number.*labels"),
    ("bad_gzip", "cannot be read"),
    ("wrong_count", "expected 10000"),
    ("wrong_size", "28x28"),
    ("trailing", "trailing data"),
])
def test_corrupt_images_file(fake_pair, damage, match):
    folder, images, _ = fake_pair
    path = folder / "t10k-images-idx3-ubyte.gz"
    data = _idx_bytes("images", images)
    if damage == "truncate":
        _write(path, data[:-100])
    elif damage == "swap_magic":
        _write(path, _idx_bytes("images", images, magic=0x801))
    elif damage == "bad_gzip":
        path.write_bytes(gzip.compress(data)[:5000])  # a gzip stream cut short
    elif damage == "wrong_count":
        _write(path, _idx_bytes("images", images[:9999]))
    elif damage == "wrong_size":
        _write(path, _idx_bytes("images", np.zeros((10000, 32, 32))))
    elif damage == "trailing":
        _write(path, data + b"\0")
    with pytest.raises(MnistDataError, match=match):
        load_mnist(folder)


def test_labels_out_of_range(fake_pair):
    folder, _, labels = fake_pair
    bad = labels.copy()
    bad[7] = 11
    _write(folder / "t10k-labels-idx1-ubyte.gz", _idx_bytes("labels", bad))
    with pytest.raises(MnistDataError, match="out of range"):
        load_mnist(folder)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="subset"):
        load_mnist(tmp_path, subset="validation")
    with pytest.raises(ValueError, match="not both"):
        load_mnist(tmp_path, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="uint8"):
        mnist_to_float(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        mnist_to_float(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


# -- download: a local file:// mirror and a monkeypatched fetch, never the network --------------------------------

@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setattr("socket.socket.connect", refuse)


def test_download_from_file_mirror(mnist_dir, tmp_path, monkeypatch):
    # The real urlopen over file:// URLs: the code path a real download takes, minus the network.
    cache = tmp_path / "cache"
    mirror = mnist_dir.resolve().as_uri() + "/"
    monkeypatch.setattr(mnist_module, "MNIST_MIRRORS", ("https://unreachable.invalid/mnist/", mirror))
    real_fetch = mnist_module._fetch
    calls = []

    def fetch(url, dest, timeout=60.0):
        calls.append(url)
        if not url.startswith("file://"):
            raise OSError("network disabled in tests")
        real_fetch(url, dest, timeout)

    monkeypatch.setattr(mnist_module, "_fetch", fetch)
    out = download_mnist("test", cache, mirrors=mnist_module.MNIST_MIRRORS, progress=False)
    assert out == cache
    assert sorted(p.name for p in cache.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert len(calls) == 4  # each file: the unreachable mirror, then the file:// one
    data = load_mnist(cache_dir=cache, verify=True)
    assert data.labels.bincount().tolist() == LABEL_COUNTS
    # Second call: everything cached and valid, nothing fetched.
    calls.clear()
    load_mnist(cache_dir=cache, download=True)
    assert calls == []


def test_download_rejects_wrong_content(fake_pair, tmp_path, monkeypatch, no_network):
    folder, _, _ = fake_pair  # valid IDX files whose checksums are not MNIST's
    cache = tmp_path / "cache"

    def fetch(url, dest, timeout=60.0):
        shutil.copyfile(folder / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(mnist_module, "_fetch", fetch)
    with pytest.raises(RuntimeError, match="SHA-256"):
        download_mnist("test", cache, mirrors=("https://a.invalid/", "https://b.invalid/"), progress=False)
    assert not any(cache.iterdir())  # no partial or unverified file left behind


def test_download_repairs_damaged_cache(mnist_dir, tmp_path, monkeypatch, no_network):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    shutil.copyfile(mnist_dir / "t10k-labels-idx1-ubyte.gz", cache / "t10k-labels-idx1-ubyte.gz")
    fetched = []

    def fetch(url, dest, timeout=60.0):
        fetched.append(url.rsplit("/", 1)[1])
        shutil.copyfile(mnist_dir / fetched[-1], dest)

    monkeypatch.setattr(mnist_module, "_fetch", fetch)
    data = load_mnist(cache_dir=cache, download=True)
    assert fetched == ["t10k-images-idx3-ubyte.gz"]
    assert hashlib.sha256(gzip.open(cache / fetched[0]).read()).hexdigest() == \
        mnist_module.MNIST_SHA256["t10k-images-idx3-ubyte"]
    assert data.images.shape == (10000, 28, 28)
