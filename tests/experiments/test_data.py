"""The offline data sets: sizes, splits, normalization, determinism, and the IDX reader's checks."""

import gzip

import numpy as np
import pytest
import torch

from experiments import data


def test_fashion_mnist_splits_have_the_documented_sizes_and_are_disjoint():
    d = data.fashion_mnist()
    assert d.train_x.shape == (55_000, 1, 28, 28) and d.val_x.shape == (5_000, 1, 28, 28)
    assert d.test_x.shape == (10_000, 1, 28, 28)
    assert set(d.train_y.unique().tolist()) == set(range(10))
    # normalized with the training statistics: mean ~0, std ~1
    assert abs(float(d.train_x.mean())) < 0.01 and abs(float(d.train_x.std()) - 1) < 0.01
    # validation images are not in the training split (images compared by a subsample of their pixels)
    def keys(x):
        return {tuple(row) for row in (x.flatten(1)[:, ::7] * 1000).round().to(torch.int64).tolist()}

    assert len(keys(d.val_x) & keys(d.train_x)) < 10  # Fashion-MNIST has a few exact duplicate images


def test_fashion_mnist_split_is_fixed_not_random():
    data.fashion_mnist.cache_clear()
    first = data.fashion_mnist().val_y.clone()
    data.fashion_mnist.cache_clear()
    torch.manual_seed(999)  # the split must not depend on the global RNG
    assert torch.equal(first, data.fashion_mnist().val_y)


def test_read_idx_rejects_wrong_magic_and_size(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc"))
    with pytest.raises(ValueError, match="unsigned-byte"):
        data.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc"))
    with pytest.raises(ValueError, match="expected 5"):
        data.read_idx(short)
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))))
    assert np.array_equal(data.read_idx(good), np.arange(6, dtype=np.uint8).reshape(2, 3))


def test_missing_fashion_mnist_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (tmp_path,))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(data.DataUnavailable, match="make data"):
        data.fashion_mnist_dir()


def test_shakespeare_holds_out_whole_plays():
    corpus = data.shakespeare()
    assert len(corpus.plays) == 38
    assert corpus.plays["hamlet"] == "val" and corpus.plays["macbeth"] == "test"
    assert sum(s == "train" for s in corpus.plays.values()) == 34
    assert corpus.train.numel() > 4_000_000 and corpus.val.numel() > 100_000 and corpus.test.numel() > 100_000
    assert int(corpus.train.max()) < len(corpus.vocabulary)
    text = corpus.decode(corpus.test[:2000])
    assert text.startswith("The Tempest") and "MACBETH" in corpus.decode(corpus.test)
    assert "**" not in corpus.decode(corpus.train[:20000])  # Markdown emphasis stripped


def test_clean_play_strips_markdown():
    assert data.clean_play("## ACT I\n\n**IAGO**  \n_Exit_\n") == "ACT I\n\nIAGO\nExit\n"
