"""The truncation against closed forms and a float64 full SVD."""

import pytest
import torch

from kasa_lightning.kasa.svd import extreme_triplets, weight_fingerprint


def _weight(m: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (120, 120), (300, 90), (90, 300)])
@pytest.mark.parametrize("which", ["minor", "principal"])
def test_triplets_match_float64_svd(shape, which):
    w = _weight(*shape)
    r = 5
    t = extreme_triplets(w.float(), r, which)
    s_all = torch.linalg.svdvals(w.float().double())
    k = min(shape)
    expected = s_all[k - r :].flip(0) if which == "minor" else s_all[:r]
    torch.testing.assert_close(t.s, expected, atol=1e-10, rtol=1e-8)
    w32 = w.float().double()
    # singular vectors: W v = u s, W^T u = v s, orthonormal columns
    torch.testing.assert_close(w32 @ t.v, t.us, atol=1e-10, rtol=0)
    torch.testing.assert_close(w32.T @ t.u, t.v * t.s, atol=1e-9, rtol=0)
    eye = torch.eye(r, dtype=torch.float64)
    torch.testing.assert_close(t.v.T @ t.v, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(t.u.T @ t.u, eye, atol=1e-9, rtol=0)


@pytest.mark.parametrize("shape", [(300, 90), (90, 300)])
def test_memory_layout_does_not_change_the_triplets(shape):
    # a column-major weight (a transposed view, as Conv1D stores its (out, in) weight) takes the other dsyrk call
    w = _weight(*shape).float()
    column_major = w.T.contiguous().T
    assert not column_major.is_contiguous()
    a, b = extreme_triplets(w, 5), extreme_triplets(column_major, 5)
    torch.testing.assert_close(a.s, b.s, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.us @ a.v.T, b.us @ b.v.T, atol=1e-12, rtol=0)


def test_truncated_weight_keeps_top_singular_values_and_drops_energy():
    w = _weight(200, 64, seed=3).float()
    r = 8
    t = extreme_triplets(w, r, "minor")
    world = w.double() - t.dropped()
    s = torch.linalg.svdvals(w.double())
    s_world = torch.linalg.svdvals(world)
    k = 64
    # the truncated weight's singular values are the top k - r of W, and r zeros
    torch.testing.assert_close(s_world[: k - r], s[: k - r], atol=1e-10, rtol=0)
    assert s_world[k - r :].abs().max() < 1e-10
    # ||W - W_world||_F^2 = sum of the dropped s_i^2
    torch.testing.assert_close((w.double() - world).square().sum(), s[k - r :].square().sum(), atol=1e-12, rtol=1e-10)


def test_bfloat16_weight_is_decomposed_in_float64():
    w = _weight(48, 32).to(torch.bfloat16)
    t = extreme_triplets(w, 4)
    assert t.s.dtype == torch.float64
    s = torch.linalg.svdvals(w.double())
    torch.testing.assert_close(t.s, s[-4:].flip(0), atol=1e-10, rtol=1e-8)


def test_disk_cache_returns_the_same_triplets(tmp_path):
    w = _weight(150, 100).float()
    first = extreme_triplets(w, 6, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    second = extreme_triplets(w, 6, cache_dir=tmp_path)
    for a, b in zip((first.u, first.s, first.v, first.us), (second.u, second.s, second.v, second.us)):
        assert torch.equal(a, b)
    # another weight or r is another entry
    extreme_triplets(w + 1e-3, 6, cache_dir=tmp_path)
    extreme_triplets(w, 5, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


def test_fingerprint_sees_every_byte_dtype_and_shape():
    w = _weight(64, 48).float()
    key = weight_fingerprint(w)
    assert weight_fingerprint(w.clone()) == key
    changed = w.clone()
    changed[37, 11] = torch.nextafter(changed[37, 11], torch.tensor(10.0))  # one ulp in one element
    assert weight_fingerprint(changed) != key
    assert weight_fingerprint(w.reshape(48, 64)) != key  # same bytes, other shape
    assert weight_fingerprint(w.view(torch.int32)) != key  # same bytes, other dtype
    assert weight_fingerprint(w.T) == weight_fingerprint(w.T.contiguous())  # views hash their values
    assert weight_fingerprint(w.bfloat16()) != weight_fingerprint(w.half())


def test_rank_must_leave_something():
    with pytest.raises(ValueError, match="min"):
        extreme_triplets(torch.randn(10, 6), 6)
