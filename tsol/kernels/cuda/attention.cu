// Packing helpers of the tensor-core flash attention (declared in attention.py).
//
// Numba ABI: `extern "C" __device__ int f(T* ret, args...)` writes the result through `ret`
// and returns 0. Inline PTX only and no #includes (the pip CUDA headers lack crt/mma.h).

// Two float32 values as one register of two 16-bit values, `lo` in the low half, rounded to
// nearest even: the A-fragment register of an mma.sync from two accumulator values.
extern "C" __device__ int tsol_pack_bf16x2(unsigned* ret, float lo, float hi)
{
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(*ret) : "f"(hi), "f"(lo));
    return 0;
}

extern "C" __device__ int tsol_pack_f16x2(unsigned* ret, float lo, float hi)
{
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(*ret) : "f"(hi), "f"(lo));
    return 0;
}
