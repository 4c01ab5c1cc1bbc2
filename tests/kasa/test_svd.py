"""The truncation against closed forms and a float64 full SVD."""

import os
import subprocess
import sys

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


def _decaying(m: int, n: int, seed: int = 0) -> torch.Tensor:
    """A float32 weight with singular values 1 ... 1e-4 (log-spaced): small ones far below the largest."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return ((u * torch.logspace(0, -4, k, dtype=torch.float64)) @ v.T).float()


@pytest.mark.parametrize("shape", [(600, 200), (200, 600)])
def test_row_blocks_give_the_float64_result(monkeypatch, shape):
    # The CPU path sums the float64 Gram matrix over blocks of rows and forms W Q block by block. Both are
    # backward stable, like the float64 SVD: a singular value is off by at most about c eps ||W||_2 with c a small
    # multiple of sqrt(n) (here ~ 14); allowed: 4 sqrt(n) eps s_max = 1.3e-14 s_max. Rayleigh-Ritz from the Gram
    # matrix (Q^T G Q instead of (W Q)^T (W Q)) squares the spectrum and misses it by ~1e-12 s_max on this weight.
    from kasa_lightning.kasa import svd

    w = _decaying(*shape)
    r = 8
    expected = torch.linalg.svdvals(w.double())
    tol = 4 * min(shape) ** 0.5 * torch.finfo(torch.float64).eps * expected[0].item()
    whole = extreme_triplets(w, r)  # one block: W converted at once, as an unblocked computation
    monkeypatch.setattr(svd, "_BLOCK_BYTES", 8 * min(shape) * 48)
    monkeypatch.setattr(svd, "_MIN_ROWS", 48)  # 13 blocks, the last one short
    blocked = extreme_triplets(w, r)
    torch.testing.assert_close(blocked.s, expected[-r:].flip(0), atol=tol, rtol=0)
    torch.testing.assert_close(blocked.s, whole.s, atol=tol, rtol=0)
    # D = sum of r terms s_i u_i v_i^T, each moving by about tol: up to sqrt(r) tol
    torch.testing.assert_close(blocked.dropped(), whole.dropped(), atol=r**0.5 * tol, rtol=0)


def test_tall_few_columns_weight_takes_r_of_a_blocked_qr(monkeypatch):
    # n = 24 <= 3q: a full SVD; above the block size, of R from W = QR built block by block (TSQR)
    from kasa_lightning.kasa import svd

    w = _decaying(3000, 24)
    direct = extreme_triplets(w, 5)
    monkeypatch.setattr(svd, "_BLOCK_BYTES", 8 * 24 * 256)
    monkeypatch.setattr(svd, "_MIN_ROWS", 256)
    assert w.numel() * 8 > svd._BLOCK_BYTES
    blocked = extreme_triplets(w, 5)
    s = torch.linalg.svdvals(w.double())
    tol = 4 * 24**0.5 * torch.finfo(torch.float64).eps * s[0].item()
    torch.testing.assert_close(blocked.s, s[-5:].flip(0), atol=tol, rtol=0)
    torch.testing.assert_close(blocked.dropped(), direct.dropped(), atol=tol, rtol=0)
    eye = torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(blocked.u.T @ blocked.u, eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(w.double().T @ blocked.u, blocked.v * blocked.s, atol=1e-9, rtol=0)


_PEAK_SCRIPT = """
import sys, torch
from kasa_lightning.kasa.svd import extreme_triplets
torch.set_num_threads(1)
m, n = int(sys.argv[1]), int(sys.argv[2])
extreme_triplets(torch.randn(m, n).bfloat16(), 16)  # libraries loaded, BLAS work buffers made
w = torch.randn(m, n).bfloat16()
def hwm():
    with open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith("VmHWM:")).split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark starts again from the current RSS
before = hwm()
extreme_triplets(w, 16)
print((hwm() - before) / (w.numel() * w.element_size()))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("shape", [(4096, 1024), (1024, 4096)])
def test_truncation_holds_the_gram_matrix_not_a_float64_copy(shape):
    # A fresh process (its RSS high-water mark reset just before the call; glibc returns freed blocks at once).
    # Held above the bf16 weight: its float64 Gram matrix (n x n: 8 n^2 bytes, here the weight's own 2 m n bytes)
    # and one block of rows; a float64 copy of W alone is 4x the weight's bytes.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, *map(str, shape)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    growth = float(out.stdout.strip().splitlines()[-1])
    assert growth < 2.0, f"peak {growth:.2f}x the bf16 weight's bytes"
