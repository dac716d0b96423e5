"""MNIST from its original IDX files, and the project's split of it.

Where the data comes from
    MNIST is not shipped with gencore. `load_mnist(root)` reads the original IDX files (gzip-compressed
    ``t10k-images-idx3-ubyte.gz`` ... or already decompressed) from a folder the user names, checking the IDX magic
    numbers, the dimensions and the file sizes, and optionally the SHA-256 of the content. With ``download=True`` the
    missing files are fetched from the standard mirrors into a cache folder (default ``~/.cache/gencore/mnist``, or
    ``$GENCORE_CACHE/mnist``), and nothing is kept unless the SHA-256 of its decompressed bytes is the published one.

    Checksums are taken over the *decompressed* IDX bytes, not over the .gz files: a re-compressed copy of MNIST
    (same content, different gzip bytes) is still recognised as MNIST, and a download is still checked end to end.

The project's split (used everywhere in gencore)
    Only the 10,000-image *test* file is used: its first 8,000 images train generative models (and the shipped
    metrics classifier), its last 2,000 are the held-out real reference set that FID, precision and recall compare
    samples against. `mnist_split("train" | "reference")` returns one part; `MNIST(part=...)` is the Dataset.

Images come out of the Dataset as float32 (1, 28, 28) tensors scaled to [-1, 1] (``x / 127.5 - 1``), the range of
every generator and of the metrics classifier.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "MNIST",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_REFERENCE_SIZE",
    "MNIST_SHA256",
    "MNIST_TRAIN_SIZE",
    "MnistArrays",
    "MnistDataError",
    "download_mnist",
    "load_mnist",
    "mnist_cache_dir",
    "mnist_split",
    "mnist_to_float",
    "read_idx",
]

# Project-wide split of the 10,000-image MNIST test file: the first 8,000 train generative models, the last 2,000
# are the held-out real reference set of the metrics.
MNIST_TRAIN_SIZE = 8000
MNIST_REFERENCE_SIZE = 2000

# (subset, kind) -> file name without ".gz"; subset "test" is the 10k file the project uses, "train" the 60k one.
MNIST_FILES: dict[tuple[str, str], str] = {
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
}

# SHA-256 of the decompressed IDX bytes of the published files (LeCun, Cortes and Burges).
MNIST_SHA256: dict[str, str] = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}

# The standard download locations, tried in order (yann.lecun.com is often unreachable, hence the mirrors first:
# PyTorch's and TensorFlow's copies of the same files).
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_COUNTS = {"test": 10000, "train": 60000}
# IDX magic: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


class MnistDataError(ValueError):
    """An MNIST file is corrupt, truncated, of the wrong kind, or not the published one."""


class MnistArrays(NamedTuple):
    """Images as uint8 (N, 28, 28) in 0..255, labels as int64 (N,) in 0..9 (CPU tensors)."""

    images: torch.Tensor
    labels: torch.Tensor


def mnist_cache_dir() -> Path:
    """Where downloads go: ``$GENCORE_CACHE/mnist`` if set, else ``$XDG_CACHE_HOME/gencore/mnist`` or
    ``~/.cache/gencore/mnist``."""
    if os.environ.get("GENCORE_CACHE"):
        return Path(os.environ["GENCORE_CACHE"]).expanduser() / "mnist"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gencore" / "mnist"


def _read_bytes(path: Path) -> bytes:
    """The IDX bytes of `path`, decompressed if it is gzip data (recognised by its magic bytes, not its name)."""
    try:
        with open(path, "rb") as f:
            is_gzip = f.read(2) == b"\x1f\x8b"
        if is_gzip:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; EOFError: truncated gzip stream
        raise MnistDataError(f"{path}: cannot be read as IDX data ({exc.__class__.__name__}: {exc})") from exc


def _parse_idx(data: bytes, kind: str, *, source: str, expected_count: int | None = None) -> np.ndarray:
    """Parse IDX bytes of MNIST images (N, 28, 28) or labels (N,), checking magic, dimensions and size."""
    header = 16 if kind == "images" else 8
    if len(data) < header:
        raise MnistDataError(f"{source}: {len(data)} bytes is shorter than the {header}-byte IDX {kind} header")
    magic = int.from_bytes(data[0:4], "big")
    if magic != _MAGIC[kind]:
        other = [k for k, m in _MAGIC.items() if m == magic]
        hint = f" (that is the magic of an IDX {other[0]} file: images and labels swapped?)" if other else ""
        raise MnistDataError(f"{source}: IDX magic number 0x{magic:08x}, expected 0x{_MAGIC[kind]:08x} for "
                             f"{kind}{hint}")
    count = int.from_bytes(data[4:8], "big")
    if kind == "images":
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        if (rows, cols) != (28, 28):
            raise MnistDataError(f"{source}: images are {rows}x{cols}, MNIST images are 28x28")
        shape: tuple[int, ...] = (count, 28, 28)
    else:
        shape = (count,)
    if expected_count is not None and count != expected_count:
        raise MnistDataError(f"{source}: header says {count} items, expected {expected_count}")
    expected_len = header + int(np.prod(shape))
    if len(data) != expected_len:
        raise MnistDataError(f"{source}: {len(data)} bytes, expected {expected_len} for {count} {kind} "
                             f"({'truncated' if len(data) < expected_len else 'trailing data'})")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, owns its memory
    if kind == "labels" and count and int(array.max()) > 9:
        raise MnistDataError(f"{source}: label {int(array.max())} is out of range 0..9")
    return array


def read_idx(path: str | os.PathLike, kind: str, *, expected_count: int | None = None) -> np.ndarray:
    """Read one MNIST IDX file (``.gz`` or raw) and return a uint8 array: (N, 28, 28) images or (N,) labels.

    Raises FileNotFoundError if the file is missing, MnistDataError (a ValueError) if it is not a valid MNIST IDX
    file of that kind (bad gzip, wrong magic number, wrong dimensions, truncated or oversized, labels > 9).
    """
    if kind not in _MAGIC:
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST file not found: {path}")
    return _parse_idx(_read_bytes(path), kind, source=str(path), expected_count=expected_count)


def _find_file(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def _check_subset(subset: str) -> None:
    if subset not in _COUNTS:
        raise ValueError(f"subset must be 'test' (the 10k file the project uses) or 'train' (60k), got {subset!r}")


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Copy `url` (http(s):// or file://) to `dest`. Tests replace this function; nothing else touches the network."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def download_mnist(subset: str = "test", cache_dir: str | os.PathLike | None = None, *,
                   mirrors: tuple[str, ...] | list[str] = MNIST_MIRRORS, progress: bool = True) -> Path:
    """Download the MNIST images and labels of `subset` ("test" or "train") into `cache_dir` and return it.

    Each file is fetched as ``<name>.gz`` from the first mirror that serves it with the right content: it is
    decompressed, parsed and its SHA-256 compared with `MNIST_SHA256` before it is moved (atomically) into the
    cache; a wrong or truncated file from one mirror makes the next one be tried. Files already in the cache with
    the right checksum are not fetched again. Raises RuntimeError listing each mirror's failure if none worked.
    """
    _check_subset(subset)
    cache = Path(cache_dir) if cache_dir is not None else mnist_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for kind in ("images", "labels"):
        name = MNIST_FILES[(subset, kind)]
        existing = _find_file(cache, name)
        if existing is not None:
            try:
                _load_verified(existing, name, kind, subset, verify=True)
                continue
            except MnistDataError:
                pass  # a damaged cache entry: fetch it again
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name + ".gz"
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".gz.part", dir=cache)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                if progress:
                    print(f"downloading {url}", flush=True)
                _fetch(url, tmp)
                _load_verified(tmp, name, kind, subset, verify=True, source=url)
                os.replace(tmp, cache / f"{name}.gz")
                break
            except Exception as exc:  # noqa: BLE001 - any failure of one mirror means: try the next
                failures.append(f"{url}: {exc.__class__.__name__}: {exc}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise RuntimeError(f"could not download {name}.gz from any mirror:\n  " + "\n  ".join(failures))
    return cache


def _load_verified(path: Path, name: str, kind: str, subset: str, *, verify: bool,
                   source: str | None = None) -> np.ndarray:
    data = _read_bytes(path)
    source = source or str(path)
    array = _parse_idx(data, kind, source=source, expected_count=_COUNTS[subset])
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != MNIST_SHA256[name]:
            raise MnistDataError(f"{source}: SHA-256 of the decompressed content is {digest}, the published "
                                 f"{name} has {MNIST_SHA256[name]}")
    return array


def load_mnist(root: str | os.PathLike | None = None, *, subset: str = "test", download: bool = False,
               cache_dir: str | os.PathLike | None = None, verify: bool = False) -> MnistArrays:
    """Load an MNIST file pair (images and labels) as CPU tensors.

    Parameters:
        root: folder holding ``t10k-images-idx3-ubyte(.gz)`` and ``t10k-labels-idx1-ubyte(.gz)`` (or the
            ``train-*`` pair for subset="train"). None: the cache folder (see `mnist_cache_dir`).
        subset: "test" (10,000 images: the file the project uses, see `mnist_split`) or "train" (60,000).
        download: fetch missing files from `MNIST_MIRRORS` (checksum-verified) into the folder read from (root, or
            the cache folder).
        cache_dir: the cache folder used when root is None (default `mnist_cache_dir()`).
        verify: also compare the SHA-256 of the content with the published one (always done for downloads).
            Magic numbers, dimensions, sizes and label ranges are checked on every load.

    Returns:
        MnistArrays(images uint8 (N, 28, 28), labels int64 (N,)).

    Raises:
        FileNotFoundError: a file is missing (the message says where it looked and how to get it).
        MnistDataError (a ValueError): a file is corrupt, of the wrong kind, or fails the checksum.
    """
    _check_subset(subset)
    if root is not None and cache_dir is not None:
        raise ValueError("pass root (a folder holding MNIST) or cache_dir (where downloads go), not both")
    if root is not None:
        folder = Path(root).expanduser()
    else:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else mnist_cache_dir()
    if download:
        download_mnist(subset, folder)  # skips files already there with the right checksum
        verify = True
    arrays = []
    for kind in ("images", "labels"):
        name = MNIST_FILES[(subset, kind)]
        path = _find_file(folder, name)
        if path is None:
            raise FileNotFoundError(
                f"MNIST {kind} file {name}.gz (or {name}) not found in {folder}. Name the folder that holds the "
                f"original IDX files (command line: --mnist-dir DIR or GENCORE_MNIST_DIR=DIR; Python: root=DIR), "
                f"or let gencore fetch them from {MNIST_MIRRORS[0]} with their checksums verified (command line: "
                f"--download; Python: download=True).")
        arrays.append(_load_verified(path, name, kind, subset, verify=verify))
    images, labels = arrays
    if len(images) != len(labels):  # unreachable with the count checks above, kept for custom subsets
        raise MnistDataError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return MnistArrays(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


_PARTS = ("train", "reference", "all")


def _part_slice(part: str) -> slice:
    if part == "train":
        return slice(0, MNIST_TRAIN_SIZE)
    if part == "reference":
        return slice(MNIST_TRAIN_SIZE, MNIST_TRAIN_SIZE + MNIST_REFERENCE_SIZE)
    if part == "all":
        return slice(0, MNIST_TRAIN_SIZE + MNIST_REFERENCE_SIZE)
    raise ValueError(f"part must be one of {_PARTS}, got {part!r}")


def mnist_split(part: str, root: str | os.PathLike | None = None, **load_kwargs) -> MnistArrays:
    """The project's split of the 10,000-image MNIST test file.

    part="train": its first 8,000 images (train generative models and the metrics classifier);
    part="reference": its last 2,000 (the held-out real set FID / precision / recall compare against; nothing in
    gencore trains on them); part="all": all 10,000 in file order.

    `root` and `load_kwargs` (download, cache_dir, verify) are passed to `load_mnist(subset="test")`.
    Returns MnistArrays(images uint8 (n, 28, 28), labels int64 (n,)).
    """
    sl = _part_slice(part)
    data = load_mnist(root, subset="test", **load_kwargs)
    return MnistArrays(data.images[sl].clone(), data.labels[sl].clone())


def mnist_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) or (N, 1, 28, 28) in 0..255 -> float32 (N, 1, 28, 28) in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"images must be a uint8 tensor, got {getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 28, 28) or (N, 1, 28, 28), got {tuple(images.shape)}")
    return images.to(torch.float32) / 127.5 - 1.0


class MNIST(Dataset):
    """MNIST as a torch Dataset of (image, label): image float32 (1, 28, 28) in [-1, 1], label an int in 0..9.

    Parameters:
        root: folder with the original IDX files (see `load_mnist`); None: the download cache.
        part: "train" (first 8,000 of the test file, the default: what generative models train on), "reference"
            (last 2,000, the held-out real set of the metrics) or "all" (10,000).
        download, cache_dir, verify: as in `load_mnist`.

    Attributes:
        images: float32 (n, 1, 28, 28) in [-1, 1], all of the part (small: 8,000 images are 25 MB), for code that
            wants the whole set as one tensor (e.g. FID reference statistics).
        labels: int64 (n,).
    """

    def __init__(self, root: str | os.PathLike | None = None, part: str = "train", *, download: bool = False,
                 cache_dir: str | os.PathLike | None = None, verify: bool = False):
        data = mnist_split(part, root, download=download, cache_dir=cache_dir, verify=verify)
        self.part = part
        self.images = mnist_to_float(data.images)
        self.labels = data.labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"MNIST(part={self.part!r}, n={len(self)})"
