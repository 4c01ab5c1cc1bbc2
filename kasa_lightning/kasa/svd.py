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

Small matrices (q >= n / 3) take a plain float64 SVD. The Gram matrix stays float64: a float32 one squares the
spectrum in single precision and loses digits of exactly the small singular values KaSA drops. Accuracy and time
against PEFT's float32 full SVD: ``benchmarks/truncation.py``, results in docs/benchmarks.md.

Results are float64 on the weight's device. ``cache_dir`` stores them on disk keyed by a fingerprint of the
weight bytes (xxHash3-128, which reads memory at several GB/s: hashing is most of a cache hit's cost), r and
``which``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Which = Literal["minor", "principal"]
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
    weight: torch.Tensor, r: int, which: Which = "minor", cache_dir: str | os.PathLike | None = None
) -> Triplets:
    """The r smallest (``"minor"``) or largest (``"principal"``) singular triplets of ``weight`` (m x n)."""
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


def weight_fingerprint(weight: torch.Tensor) -> str:
    """A content hash of the weight: dtype, shape and bytes (xxHash3, 128 bits; a cache key, not a signature)."""
    import xxhash

    w = weight.detach().contiguous().cpu()
    h = xxhash.xxh3_128(f"{w.dtype}{tuple(w.shape)}".encode())
    if w.numel():
        h.update(w.reshape(-1).view(torch.uint8).numpy().data)  # the array's memoryview: no copy of the weight
    return h.hexdigest()


def _compute(weight: torch.Tensor, r: int, which: Which) -> Triplets:
    transposed = weight.shape[0] < weight.shape[1]
    w64 = (weight.T if transposed else weight).to(torch.float64)  # (m, n) with n <= m
    n = w64.shape[1]
    q = min(n, r + max(r, 8))  # subspace size: r wanted + oversampling
    if 3 * q >= n:  # small matrix: a full float64 SVD is cheap and exact
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
        sl = slice(n - r, n) if which == "minor" else slice(0, r)
        order = torch.arange(r - 1, -1, -1) if which == "minor" else torch.arange(r)
        v = vh[sl].T[:, order]
        us = w64 @ v
        out = Triplets(u=u[:, sl][:, order], s=s[sl][order], v=v, us=us)
    else:
        out = _rayleigh_ritz(w64, _eig_subspace(w64, q, which), r, which)
    if transposed:  # we decomposed W^T = V S U^T
        out = Triplets(u=out.v, s=out.s, v=out.u, us=out.v * out.s)
    return out


def _eig_subspace(w64: torch.Tensor, q: int, which: Which) -> torch.Tensor:
    """An (n, q) orthonormal basis of the q extreme eigenvectors of W^T W (W float64, n <= m)."""
    n = w64.shape[1]
    if w64.device.type == "cuda":
        _, vecs = torch.linalg.eigh(w64.T @ w64)
        vecs = vecs[:, :q] if which == "minor" else vecs[:, n - q :]
    else:
        import scipy.linalg
        from scipy.linalg import blas

        # scipy's BLAS has its own thread pool, which torch.set_num_threads does not govern; when it competes with
        # torch's (or another process) for the cores it slows down by 10-30x. Follow torch's count, and use one
        # thread below 1024 columns, where more threads gain little.
        threads = torch.get_num_threads() if n >= 1024 else 1
        index = [0, q - 1] if which == "minor" else [n - q, n - 1]
        with _blas_threads().limit(limits=threads):
            # dsyrk forms the upper triangle of W^T W only: half the flops of a matmul. It takes Fortran-ordered
            # arrays; a row-major W is W^T in Fortran order, so ask for A A^T with A = W^T (no copy of W, which the
            # wrapper would make otherwise)
            a = w64.numpy()
            gram = (
                blas.dsyrk(1.0, a, trans=1, lower=0) if a.flags.f_contiguous else blas.dsyrk(1.0, a.T, trans=0, lower=0)
            )
            _, vecs_np = scipy.linalg.eigh(
                gram, lower=False, subset_by_index=index, driver="evx", overwrite_a=True, check_finite=False
            )
        vecs = torch.from_numpy(vecs_np)
    basis, _ = torch.linalg.qr(vecs.to(device=w64.device, dtype=torch.float64))
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


def _rayleigh_ritz(w64: torch.Tensor, basis: torch.Tensor, r: int, which: Which) -> Triplets:
    wq = w64 @ basis  # (m, q)
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
