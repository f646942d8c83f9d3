// Tensor-core primitives for TSOL's numba-cuda kernels (declared in tensorcore.py).
//
// Numba ABI: `extern "C" __device__ int f(T* ret, args...)` writes the result through `ret`
// and returns 0. A UniTuple(x, n) result is n consecutive x. Inline PTX only and no #includes:
// the pip CUDA headers lack crt/mma.h. Pointers into shared memory arrive as generic
// addresses (Numba casts shared arrays to the generic space) and are converted here.

static __device__ __forceinline__ unsigned tsol_smem_addr(const void* p)
{
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Four 8x8 b16 matrices; lane 8i + r gives the address of row r of matrix i.
extern "C" __device__ int tsol_ldmatrix_x4(unsigned* ret, const unsigned short* base, int off)
{
    unsigned s = tsol_smem_addr(base + off);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(ret[0]), "=r"(ret[1]), "=r"(ret[2]), "=r"(ret[3]) : "r"(s) : "memory");
    return 0;
}

extern "C" __device__ int tsol_ldmatrix_x4_trans(unsigned* ret, const unsigned short* base,
                                                 int off)
{
    unsigned s = tsol_smem_addr(base + off);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(ret[0]), "=r"(ret[1]), "=r"(ret[2]), "=r"(ret[3]) : "r"(s) : "memory");
    return 0;
}

#define TSOL_MMA(NAME, T)                                                                     \
extern "C" __device__ int NAME(float* ret, float c0, float c1, float c2, float c3,            \
                               unsigned a0, unsigned a1, unsigned a2, unsigned a3,            \
                               unsigned b0, unsigned b1)                                      \
{                                                                                             \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 "                     \
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"        \
                 : "=f"(ret[0]), "=f"(ret[1]), "=f"(ret[2]), "=f"(ret[3])                     \
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1),                      \
                   "f"(c0), "f"(c1), "f"(c2), "f"(c3));                                       \
    return 0;                                                                                 \
}

TSOL_MMA(tsol_mma_bf16, "bf16")
TSOL_MMA(tsol_mma_f16, "f16")

// 16 bytes global -> shared, asynchronously; bytes past src_bytes (0..16) are zero-filled.
extern "C" __device__ int tsol_cp_async16(int* ret, unsigned short* dst, int dst_off,
                                          const unsigned short* src, long long src_off,
                                          int src_bytes)
{
    unsigned s = tsol_smem_addr(dst + dst_off);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(s), "l"(src + src_off), "r"(src_bytes) : "memory");
    *ret = 0;
    return 0;
}

extern "C" __device__ int tsol_cp_async_commit(int* ret)
{
    asm volatile("cp.async.commit_group;" ::: "memory");
    *ret = 0;
    return 0;
}

// Wait until at most `pending` (0..7) of this thread's committed groups are in flight.
extern "C" __device__ int tsol_cp_async_wait(int* ret, int pending)
{
    switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
    }
    *ret = 0;
    return 0;
}
