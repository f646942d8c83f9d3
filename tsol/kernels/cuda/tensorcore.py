"""Tensor-core primitives for CUDA kernels: ldmatrix, mma.sync m16n8k16 and cp.async.

On the GPU each primitive is a device function of ``mma.cu`` (inline PTX), declared here with
``gpu.declare_device`` and linked into every kernel that calls it (LTO inlines it). Under the
simulator the same names are pure-Python twins with the same contract; the twins exchange the
warp's registers through ``scratch``, a shared ``int64`` array of ``scratch_size(threads)``
elements that every kernel using these primitives allocates (one element on the GPU, where it
is unused), so a simulator run checks a kernel's fragment indexing against the PTX ISA layouts.

Every thread of the block must call ``ldmatrix_*`` and ``mma_*`` at the same points (the twins
synchronize the block). Operands are 16-bit values carried as ``uint16`` arrays (float16 and
bfloat16 alike), fragments as ``uint32`` registers of two values (the lower column in the low
half), accumulators as float32.

Fragment layouts (lane ``l``, ``g = l // 4``, ``t = l % 4``), m16n8k16 with row-major A (16x16)
and column-major B (16x8):

- A: ``a0 = A[g, 2t:2t+2]``, ``a1 = A[g+8, 2t:2t+2]``, ``a2 = A[g, 2t+8:2t+10]``,
  ``a3 = A[g+8, 2t+8:2t+10]``; B: ``b0 = B[2t:2t+2, g]``, ``b1 = B[2t+8:2t+10, g]``;
  C/D: ``c0, c1 = C[g, 2t], C[g, 2t+1]``, ``c2, c3 = C[g+8, 2t], C[g+8, 2t+1]``.
- ``ldmatrix_x4(smem, off, scratch)``: four 8x8 matrices; lane ``8i + r`` passes the element
  offset of row ``r`` of matrix ``i`` (16-byte aligned); register ``i`` of lane ``l`` is
  matrix ``i``'s row ``g``, columns ``2t, 2t+1``. Lane ``l`` passing row ``l % 16`` at column
  ``8 * (l // 16)`` of a row-major 16x16 tile yields exactly ``a0..a3``.
- ``ldmatrix_x4_trans``: the same with each matrix transposed: register ``i`` holds
  ``(row 2t, col g), (row 2t+1, col g)``. Lane ``l`` passing row ``l % 16`` at column
  ``8 * (l // 16)`` of a row-major (k, n) 16x16 tile yields ``b0, b1`` of its columns 0-7 and
  then ``b0, b1`` of columns 8-15.

>>> # inside a generated kernel (see tsol/kernels/cuda/linalg.py):
>>> # a0, a1, a2, a3 = tc.ldmatrix_x4(smem, off, scratch)
>>> # d0, d1, d2, d3 = tc.mma_bf16(c0, c1, c2, c3, a0, a1, a2, a3, b0, b1, scratch)
"""

from __future__ import annotations

import numpy as np

from tsol.kernels.cuda import gpu

LINK = str(gpu.KERNEL_DIR / "mma.cu")
"""The CUDA source holding the primitives (linked by the declarations themselves)."""

SCRATCH_PER_THREAD = 6


def scratch_size(threads: int) -> int:
    """Elements of the ``int64`` shared scratch a block of ``threads`` passes to the primitives."""
    return threads * SCRATCH_PER_THREAD if gpu.SIMULATOR else 1


if gpu.SIMULATOR:
    def _ctx():
        return gpu.threadIdx.x, gpu.syncthreads

    def _publish(scratch, values):
        """Write this thread's ``values`` to its scratch slots; return (tid, warp base)."""
        tid, sync = _ctx()
        for i, v in enumerate(values):
            scratch[tid * SCRATCH_PER_THREAD + i] = int(v)
        sync()
        return tid, tid - tid % gpu.WARP

    def _pair(smem, off):
        return np.uint32(int(smem[off]) | (int(smem[off + 1]) << 16))

    def ldmatrix_x4(smem, off, scratch):
        """Four 8x8 b16 matrices from shared ``smem``; see the module doc for the layout."""
        tid, base = _publish(scratch, (off,))
        lane = tid - base
        g, t = lane // 4, lane % 4
        rows = [int(scratch[(base + 8 * i + g) * SCRATCH_PER_THREAD]) for i in range(4)]
        out = tuple(_pair(smem, r + 2 * t) for r in rows)
        gpu.syncthreads()
        return out

    def ldmatrix_x4_trans(smem, off, scratch):
        """``ldmatrix_x4`` with each 8x8 matrix transposed."""
        tid, base = _publish(scratch, (off,))
        lane = tid - base
        g, t = lane // 4, lane % 4
        out = []
        for i in range(4):
            r0 = int(scratch[(base + 8 * i + 2 * t) * SCRATCH_PER_THREAD])
            r1 = int(scratch[(base + 8 * i + 2 * t + 1) * SCRATCH_PER_THREAD])
            out.append(np.uint32(int(smem[r0 + g]) | (int(smem[r1 + g]) << 16)))
        gpu.syncthreads()
        return tuple(out)

    def _decoder(bf16):
        if bf16:
            return lambda h: np.float32(np.array(h << 16, np.uint32).view(np.float32))
        return lambda h: np.float32(np.array(h, np.uint16).view(np.float16))

    def _mma(decode):
        def mma(c0, c1, c2, c3, a0, a1, a2, a3, b0, b1, scratch):
            tid, base = _publish(scratch, (a0, a1, a2, a3, b0, b1))
            lane = tid - base
            g, t = lane // 4, lane % 4

            def reg(ln, i):
                return int(scratch[(base + ln) * SCRATCH_PER_THREAD + i])

            def a_at(r, k):
                # The lane and register holding A[r, k] (module doc layout).
                reg_i = (1 if r >= 8 else 0) + (2 if k >= 8 else 0)
                bits = reg(4 * (r % 8) + (k % 8) // 2, reg_i)
                return decode((bits >> (16 * (k % 2))) & 0xFFFF)

            def b_at(k, n):
                bits = reg(4 * n + (k % 8) // 2, 4 + (1 if k >= 8 else 0))
                return decode((bits >> (16 * (k % 2))) & 0xFFFF)

            out = []
            for r, n, c in ((g, 2 * t, c0), (g, 2 * t + 1, c1), (g + 8, 2 * t, c2),
                            (g + 8, 2 * t + 1, c3)):
                acc = np.float32(c)
                for k in range(16):
                    acc = np.float32(acc + a_at(r, k) * b_at(k, n))
                out.append(acc)
            gpu.syncthreads()
            return tuple(out)
        return mma

    mma_bf16 = _mma(_decoder(True))
    mma_f16 = _mma(_decoder(False))

    def cp_async16(dst, dst_off, src, src_off, src_bytes):
        """Copy 8 uint16 from ``src[src_off:]`` to ``dst[dst_off:]``, zero past ``src_bytes``;
        the twin copies at once, which is one valid timing of the asynchronous copy."""
        n = src_bytes // 2
        for i in range(8):
            dst[dst_off + i] = src[src_off + i] if i < n else 0
        return 0

    def cp_async_commit():
        return 0

    def cp_async_wait(pending):
        return 0
else:
    from cffi import FFI
    from numba import types

    _ffi = FFI()
    _u16p = types.CPointer(types.uint16)
    _frag4 = types.UniTuple(types.uint32, 4)
    _acc4 = types.UniTuple(types.float32, 4)
    _mma_sig = _acc4(*([types.float32] * 4 + [types.uint32] * 6))
    _ldm = gpu.declare_device("tsol_ldmatrix_x4", _frag4(_u16p, types.int32), link=[LINK])
    _ldm_t = gpu.declare_device("tsol_ldmatrix_x4_trans", _frag4(_u16p, types.int32),
                                link=[LINK])
    _mma_bf16 = gpu.declare_device("tsol_mma_bf16", _mma_sig, link=[LINK])
    _mma_f16 = gpu.declare_device("tsol_mma_f16", _mma_sig, link=[LINK])
    _cp16 = gpu.declare_device("tsol_cp_async16", types.int32(
        _u16p, types.int32, _u16p, types.int64, types.int32), link=[LINK])
    _commit = gpu.declare_device("tsol_cp_async_commit", types.int32(), link=[LINK])
    _wait = gpu.declare_device("tsol_cp_async_wait", types.int32(types.int32), link=[LINK])

    @gpu.device
    def ldmatrix_x4(smem, off, scratch):
        return _ldm(_ffi.from_buffer(smem), np.int32(off))

    @gpu.device
    def ldmatrix_x4_trans(smem, off, scratch):
        return _ldm_t(_ffi.from_buffer(smem), np.int32(off))

    @gpu.device
    def mma_bf16(c0, c1, c2, c3, a0, a1, a2, a3, b0, b1, scratch):
        return _mma_bf16(c0, c1, c2, c3, a0, a1, a2, a3, b0, b1)

    @gpu.device
    def mma_f16(c0, c1, c2, c3, a0, a1, a2, a3, b0, b1, scratch):
        return _mma_f16(c0, c1, c2, c3, a0, a1, a2, a3, b0, b1)

    @gpu.device
    def cp_async16(dst, dst_off, src, src_off, src_bytes):
        return _cp16(_ffi.from_buffer(dst), np.int32(dst_off), _ffi.from_buffer(src),
                     np.int64(src_off), np.int32(src_bytes))

    @gpu.device
    def cp_async_commit():
        return _commit()

    @gpu.device
    def cp_async_wait(pending):
        return _wait(np.int32(pending))


__all__ = ["LINK", "scratch_size", "ldmatrix_x4", "ldmatrix_x4_trans", "mma_bf16", "mma_f16",
           "cp_async16", "cp_async_commit", "cp_async_wait"]
