"""RandomEmbedding: a fixed random CNN's features (the label-free space of ``glann eval --test``): the
same values from an independent torch.nn build of the network, in any chunking, from any instance with the
seed; argument checks; and a space in which FD tells real images from degraded ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from glann_testing import blob_images
from torch import nn

from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.metrics import RandomEmbedding, frechet_distance
from glann_ext.metrics import random_features as rf


def _reference(emb: RandomEmbedding, x: torch.Tensor) -> torch.Tensor:
    """The network as torch.nn modules (Conv2d without bias, AvgPool2d), fed one image at a time."""
    convs = []
    for w in emb.weights:
        conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=False)
        conv.weight.data.copy_(w)
        convs.append(conv)
    rows = []
    with torch.no_grad():
        for image in x.double():
            h, feats = image[None] * 2 - 1, []
            for conv in convs:
                h = torch.relu(conv.double()(h))
                if min(h.shape[2:]) >= 2:
                    h = nn.AvgPool2d(2)(h)
                feats += [h.flatten(2).mean(2), h.flatten(2).max(2).values]
            rows.append(torch.cat(feats, 1))
    return torch.cat(rows).float()


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 13), (1, 5), (3, 2)])
def test_features_match_an_independent_build_of_the_network(channels, size):
    emb = RandomEmbedding(channels)
    x = torch.rand(5, channels, size, size)
    got = emb.features(x)
    assert got.shape == (5, emb.dim) == (5, 896) and got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(emb, x), rtol=1e-4, atol=1e-5)


def test_the_weights_are_fixed_by_the_seed_and_chunking_changes_nothing(monkeypatch):
    x = torch.rand(9, 1, 16, 16)
    a, b, c = RandomEmbedding(1), RandomEmbedding(1), RandomEmbedding(1, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a.weights, b.weights))
    assert not torch.equal(a.weights[0], c.weights[0])
    whole = a.features(x)
    monkeypatch.setattr(rf, "ACTIVATION_BYTES", 4 * 64 * 16 * 16 * 2)  # two images a chunk
    torch.testing.assert_close(a.features(x), whole, rtol=1e-5, atol=1e-6)
    assert a.features(x[:0]).shape == (0, 896)
    assert RandomEmbedding(3, widths=(8, 4)).features(torch.rand(2, 3, 8, 8)).shape == (2, 24)


def test_arguments_are_checked_by_name():
    emb = RandomEmbedding(1)
    with pytest.raises(
        ValueError, match=r"images must have 1 channel\(s\) \(N, 1, H, W\), got shape \(2, 3, 8, 8\)"
    ):
        emb.features(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"images must be 4-D"):
        emb.features(torch.rand(8, 8))
    bad = torch.rand(2, 1, 8, 8)
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="images contains NaN or Inf"):
        emb.features(bad)
    for channels in (0, 1.5, True):
        with pytest.raises(ValueError, match="channels must be a positive int"):
            RandomEmbedding(channels)
    with pytest.raises(ValueError, match="widths must be positive ints"):
        RandomEmbedding(1, widths=(8, 0))
    for seed in (-1, 1.5, None, True):
        with pytest.raises(
            ValueError, match=r"seed must be an integer in \[0, 2\*\*63\) \(the space is fixed by it\)"
        ):
            RandomEmbedding(1, seed=seed)
    with pytest.raises(ValueError, match=r"images must be at least 1 x 1 pixels, got \(0, 0\)"):
        emb.features(torch.rand(2, 1, 0, 0))
    with pytest.raises(
        UsageError, match=r"images must lie in \[0, 1\].*\(images in \[0, 255\]: divide by 255\)"
    ):
        emb.features(torch.rand(2, 1, 8, 8) * 255)


def test_the_space_is_pinned():
    """The features of one fixed image, to four digits: another seed, another weight scale, another layer
    order or pooling gives other numbers (each of these passes every other test of this file)."""
    x = (torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) % 7) / 6
    f = RandomEmbedding(1).features(x)[0]
    got = [float(v) for v in (f[0], f[63], f[64], f[127], f[128], f[384], f[895], f.sum())]
    assert got == pytest.approx([0.2190, 0.2563, 0.8337, 0.7339, 0.2305, 0.0301, 0.1270, 235.6965], abs=2e-4)


def test_fd_in_the_space_tells_real_images_from_degraded_ones():
    """Another draw of the same kind of images scores well below a slightly blurred copy (4x, at 0.2) and a
    noisy one; more blur scores far higher."""
    real, other = (torch.as_tensor(blob_images(400, 28, seed=s))[:, None] / 255.0 for s in (1, 2))
    emb = RandomEmbedding(1)
    f_real = emb.features(real)
    same = frechet_distance(f_real, emb.features(other))
    blur = nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    blurred = frechet_distance(f_real, emb.features(blur))
    more = frechet_distance(f_real, emb.features(nn.functional.avg_pool2d(blur, 5, stride=1, padding=2)))
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.2, real.shape).astype(np.float32))
    noisy = frechet_distance(f_real, emb.features((real + noise).clamp(0, 1)))
    assert same < blurred / 3 and same < noisy / 10 and blurred < more / 5
