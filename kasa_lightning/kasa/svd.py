"""The r extreme singular triplets of a weight, without a full SVD.

KaSA (and MiLoRA) need only the r *smallest* singular triplets of each target weight, PiSSA the r largest.
A full ``torch.linalg.svd`` per layer (what PEFT does) computes all k = min(m, n) of them. Here:

1. Work on the smaller Gram matrix: for W (m x n) with n <= m, G = W^T W (n x n) has eigenvalues s_i^2 and
   eigenvectors v_i (if m < n, work on W^T and swap the roles of u and v at the end). G is formed in float64,
   whatever the weight's dtype: squaring the spectrum in float32 would lose the small singular values, which
   are exactly the ones KaSA drops.
2. CPU: ask LAPACK (``scipy.linalg.eigh(..., subset_by_index, driver="evx")``) for only q = r + p eigenpairs
   (p >= 8 oversampling vectors); CUDA: ``torch.linalg.eigh`` (fast there).
3. Rayleigh-Ritz in float64 on that q-dimensional subspace: H = (W Q)^T (W Q), eigh(H). This gives
   W v_i = u_i s_i directly (no division by a tiny s_i) and polishes the eigenvectors.

On the CPU, W is never copied whole to float64: G is summed over blocks of rows (each converted on its own, about
1 MB), and W Q is formed block by block; the set-up then holds W as given, G, and one block. Blocking changes only
the order of the float64 additions, not the accuracy (measured against a float64 SVD in docs/benchmarks.md); the
Ritz matrix is formed from W Q, never as Q^T G Q, which would square the spectrum again.

Few columns (q >= n / 3) take a full float64 SVD: of W itself when its float64 copy is small, else of the (n, n)
factor R of W = QR, built block by block. The Gram matrix stays float64: a float32 one squares the
spectrum in single precision and loses digits of exactly the small singular values KaSA drops. Accuracy and time
against PEFT's float32 full SVD: ``benchmarks/truncation.py``, results in docs/benchmarks.md.

Results are float64 on the weight's device. ``cache_dir`` stores them on disk keyed by a fingerprint of the
weight bytes (xxHash3-128, which reads memory at several GB/s: hashing is most of a cache hit's cost), r and
``which``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import torch

Which = Literal["minor", "principal"]


class Rows(Protocol):
    """A 2-D weight the CPU path reads a block of rows at a time (``w[a:b]``): a tensor, or a weight streamed from
    its checkpoint file (``quant_source.SourceRows``), so that no whole copy of it is held."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    @property
    def ndim(self) -> int: ...
    @property
    def T(self) -> Any: ...  # noqa: N802
    def numel(self) -> int: ...
    def detach(self) -> Any: ...
    def to(self, *args: Any, **kwargs: Any) -> Any: ...
    def __getitem__(self, rows: Any) -> torch.Tensor: ...


_CACHE_VERSION = "2"  # 2: xxh3-128 fingerprints (1: blake2b)


@dataclass
class Triplets:
    """r singular triplets of W (m x n): W ~ u diag(s) v^T restricted to them.

    u: (m, r) left singular vectors; s: (r,) singular values (ascending for "minor", descending for "principal");
    v: (n, r) right singular vectors; us: (m, r) = u * s = W v (exact, also when some s are 0).
    cached: whether they were read from the disk cache instead of computed.
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    us: torch.Tensor
    cached: bool = False

    def dropped(self) -> torch.Tensor:
        """The rank-r part sum_i s_i u_i v_i^T as an (m, n) matrix."""
        return self.us @ self.v.T


def extreme_triplets(
    weight: torch.Tensor | Rows, r: int, which: Which = "minor", cache_dir: str | os.PathLike | None = None
) -> Triplets:
    """The r smallest (``"minor"``) or largest (``"principal"``) singular triplets of ``weight`` (m x n): a tensor,
    or on the CPU any ``Rows`` (read a block of rows at a time)."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    m, n = weight.shape
    k = min(m, n)
    if not 1 <= r < k:
        raise ValueError(f"r={r} must satisfy 1 <= r < min{tuple(weight.shape)} = {k}")
    if which not in ("minor", "principal"):
        raise ValueError(f"which={which!r}: choose 'minor' or 'principal'")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{weight_fingerprint(weight)}-r{r}-{which}-v{_CACHE_VERSION}.safetensors"
        if path.exists():
            return _load(path, weight.device)
    triplets = _compute(weight.detach(), r, which)
    if path is not None:
        _save(path, triplets)
    return triplets


def weight_fingerprint(weight: torch.Tensor | Rows) -> str:
    """A content hash of the weight: dtype, shape and bytes (xxHash3, 128 bits; a cache key, not a signature). A
    ``Rows`` weight is hashed a block of rows at a time, to the same digest as the tensor."""
    import xxhash

    h = xxhash.xxh3_128(f"{weight.dtype}{tuple(weight.shape)}".encode())
    if isinstance(weight, torch.Tensor):
        blocks: Any = [weight.detach().contiguous().cpu()]
    else:
        step = max(1, _BLOCK_BYTES // max(1, weight.shape[1] * weight.dtype.itemsize))
        blocks = (weight[i : i + step].contiguous().cpu() for i in range(0, weight.shape[0], step))
    for w in blocks:
        if w.numel():
            h.update(w.reshape(-1).view(torch.uint8).numpy().data)  # the array's memoryview: no copy of the weight
    return h.hexdigest()


def _compute(weight: torch.Tensor | Rows, r: int, which: Which) -> Triplets:
    transposed = weight.shape[0] < weight.shape[1]
    w = weight.T if transposed else weight  # (m, n) with n <= m, a view in the weight's own dtype
    m, n = w.shape
    q = min(n, r + max(r, 8))  # subspace size: r wanted + oversampling
    if 3 * q >= n:  # few columns: a full float64 SVD (of W itself, or of R from W = QR) is cheap and exact
        out = _small_svd(w, r, which)
    elif w.device.type == "cuda":  # fast there, and GPU memory for one float64 copy is the smaller worry
        w64 = w.to(torch.float64)
        out = _rayleigh_ritz(w64, _eig_subspace(w64, q, which), r, which)
    else:
        out = _rayleigh_ritz(w, _eig_subspace(w, q, which), r, which)
    if transposed:  # we decomposed W^T = V S U^T
        out = Triplets(u=out.v, s=out.s, v=out.u, us=out.v * out.s)
    return out


#: Bytes of float64 that the CPU path holds of W at a time (one block of rows), besides its n x n Gram matrix;
#: at least ``min(_MIN_ROWS, n / 8)`` rows: fewer rows make dsyrk spend more time re-reading G than adding to it
#: (measured, one thread: G of a 14336 x 4096 weight 2.0 s in blocks of 256 rows, 2.2 s of 128, 3.5 s of 64; of a
#: 3584 x 1024 weight 0.10 s in blocks of 256 or 128 rows). A block is then at most 1/8 of the Gram matrix's bytes.
_BLOCK_BYTES = 1 << 20
_MIN_ROWS = 256


def _row_blocks(w: torch.Tensor | Rows) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, float64 copy of W[rows]) over W (m, n), ``_BLOCK_BYTES`` at a time: a contiguous (b, n) block, one
    buffer reused for every block (valid until the next one is asked for)."""
    m, n = w.shape
    step = min(m, max(min(_MIN_ROWS, n // 8), _BLOCK_BYTES // (8 * n), 1))
    buffer = torch.empty(step, n, dtype=torch.float64, device=w.device)
    for start in range(0, m, step):
        rows = slice(start, min(m, start + step))
        block = buffer[: rows.stop - start]
        block.copy_(w[rows])
        yield rows, block


def _whole_in_float64(w: torch.Tensor | Rows) -> bool:
    """Whether W is taken to float64 whole: on CUDA (fast there), or when that copy is no larger than one block."""
    return w.device.type == "cuda" or w.numel() * 8 <= _BLOCK_BYTES


def _matmul_blocks(w: torch.Tensor | Rows, x: torch.Tensor) -> torch.Tensor:
    """W @ x in float64 (x float64 (n, k)), W converted block by block (never a float64 copy of the whole W)."""
    if _whole_in_float64(w):
        return w.to(torch.float64) @ x
    out = torch.empty(w.shape[0], x.shape[1], dtype=torch.float64, device=w.device)
    for rows, block in _row_blocks(w):
        torch.matmul(block, x, out=out[rows])
    return out


def _small_svd(w: torch.Tensor | Rows, r: int, which: Which) -> Triplets:
    """The triplets of W (m, n), n small, from a full float64 SVD: of W itself when its float64 copy is small,
    else of the (n, n) triangular factor R of W = QR, built from blocks of rows (R_k = qr([R_{k-1}; W_k]).R),
    which has W's singular values and right singular vectors (Householder QR is backward stable: R's SVD is as
    accurate as W's)."""
    n = w.shape[1]
    if _whole_in_float64(w):
        w64 = w.to(torch.float64)
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    else:
        factor = torch.zeros(0, n, dtype=torch.float64)
        for _, block in _row_blocks(w):
            factor = torch.linalg.qr(torch.cat([factor, block]), mode="r").R  # (min(rows, n), n)
        _, s, vh = torch.linalg.svd(factor, full_matrices=False)
        u = None
    sl = slice(n - r, n) if which == "minor" else slice(0, r)
    order = torch.arange(r - 1, -1, -1) if which == "minor" else torch.arange(r)
    v = vh[sl].T[:, order]
    us = _matmul_blocks(w, v)  # (m, r) = W v
    if u is not None:
        return Triplets(u=u[:, sl][:, order], s=s[sl][order], v=v, us=us)
    norms = us.norm(dim=0)
    return Triplets(u=us / torch.where(norms > 0, norms, torch.ones_like(norms)), s=s[sl][order], v=v, us=us)


def _eig_subspace(w: torch.Tensor | Rows, q: int, which: Which) -> torch.Tensor:
    """An (n, q) orthonormal basis of the q extreme eigenvectors of W^T W (n <= m; float64 on CUDA, any dtype on
    the CPU, where the float64 Gram matrix is accumulated over blocks of rows)."""
    n = w.shape[1]
    if w.device.type == "cuda":  # a float64 tensor (``_compute``)
        wt = cast(torch.Tensor, w)
        _, vecs = torch.linalg.eigh(wt.T @ wt)
        vecs = vecs[:, :q] if which == "minor" else vecs[:, n - q :]
    else:
        import numpy as np
        import scipy.linalg
        from scipy.linalg import blas

        # scipy's BLAS has its own thread pool, which torch.set_num_threads does not govern; when it competes with
        # torch's (or another process) for the cores it slows down by 10-30x. Follow torch's count, and use one
        # thread below 1024 columns, where more threads gain little.
        threads = torch.get_num_threads() if n >= 1024 else 1
        index = [0, q - 1] if which == "minor" else [n - q, n - 1]
        with _blas_threads().limit(limits=threads):
            # G = sum over row blocks W_k^T W_k, in float64. dsyrk forms the upper triangle only (half the flops of
            # a matmul) and adds into the Fortran-ordered G in place (beta=1, overwrite_c); it takes Fortran-ordered
            # arrays, and a row-major block W_k is W_k^T in Fortran order, so it is asked for A A^T with A = W_k^T.
            # Each block is a partial sum of the same dot products dsyrk splits into panels itself: the rounding is
            # that of one call on the whole of W.
            gram = np.zeros((n, n), order="F")
            for _, block in _row_blocks(w):
                gram = blas.dsyrk(1.0, block.numpy().T, beta=1.0, c=gram, trans=0, lower=0, overwrite_c=1)
            _, vecs_np = scipy.linalg.eigh(
                gram, lower=False, subset_by_index=index, driver="evx", overwrite_a=True, check_finite=False
            )
            del gram
        vecs = torch.from_numpy(vecs_np)
    basis, _ = torch.linalg.qr(vecs.to(device=w.device, dtype=torch.float64))
    return basis


_CONTROLLER = None


def _blas_threads():  # noqa: ANN202
    """A threadpoolctl controller made once: building one scans the loaded libraries, too slow to do per call."""
    global _CONTROLLER
    if _CONTROLLER is None:
        import scipy.linalg  # noqa: F401  (load scipy's BLAS before the controller looks for libraries)
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _rayleigh_ritz(w: torch.Tensor | Rows, basis: torch.Tensor, r: int, which: Which) -> Triplets:
    wq = _matmul_blocks(w, basis)  # (m, q), float64
    evals, z = torch.linalg.eigh(wq.T @ wq)  # ascending
    idx = torch.arange(r) if which == "minor" else torch.arange(z.shape[1] - 1, z.shape[1] - 1 - r, -1)
    idx = idx.to(z.device)
    v = basis @ z[:, idx]  # (n, r)
    us = wq @ z[:, idx]  # (m, r) = W v
    s = evals[idx].clamp_min(0).sqrt()
    norms = us.norm(dim=0)
    u = us / torch.where(norms > 0, norms, torch.ones_like(norms))
    return Triplets(u=u, s=s, v=v, us=us)


def _save(path: Path, t: Triplets) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tensors = {"u": t.u, "s": t.s, "v": t.v, "us": t.us}
    save_file({k: x.detach().cpu().contiguous() for k, x in tensors.items()}, str(tmp))
    os.replace(tmp, path)  # atomic: a reader never sees a half-written cache file


def _load(path: Path, device: torch.device) -> Triplets:
    from safetensors.torch import load_file

    d = load_file(str(path))
    return Triplets(**{k: d[k].to(device) for k in ("u", "s", "v", "us")}, cached=True)
