// WKV7 recurrence for head size 64 in CUDA C (rwkvcpu/kernels/cuda.py links it into the numba
// kernel ``wkv7_64c`` through NVRTC, like tc_gemm.cu), for its 128-bit shared-memory loads.
//
// One block of 64 threads per (sequence, head, 16 state rows): rows are independent, so a head's
// 64 rows are split over 4 blocks and a single sequence's prefill occupies 4 H SMs, not H (at
// 256 threads per head the SM's issue rate, not the recurrence's latency, set the pace).
// Thread (i, q) = (row0 + tid / 4, tid % 4) owns row i
// of the 64 x 64 float32 state (layout [H, N_v, N_k]: row = value index, column = key index, as
// everywhere in rwkvcpu) at the 16 columns 16 m + 4 q + c (m, c in 0..3), in registers.  Per token:
//   sa = S a;  S = S diag(w) + sa b^T + v k^T;  y = S r
// The four threads of a row combine their partial dot products by warp shuffles.  Inputs arrive
// in chunks of WKV_CH tokens (a, b, w, k, r, v; 12 16-byte cp.async copies per thread per chunk),
// double-buffered in shared memory with one barrier per chunk, the next chunk's copies in flight
// while this one is computed.  The numba kernel it replaces read shared memory one float at a time: 80 load
// instructions per thread per token, which the shared-memory pipe serialised (~0.5 us a token);
// here 20 float4 loads, and the 4 threads of a row read 64 consecutive bytes (no bank conflicts).

#define WKV_CH 8
#define WKV_ROWS 16

// inline PTX and hand-made vectors only: NVRTC then needs no headers (as tc_gemm.cu)
__device__ __forceinline__ float wkv_xor(float v, int lanes) {
    float r;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(r) : "f"(v), "r"(lanes));
    return r;
}

__device__ __forceinline__ float4 wkv_f4(float x, float y, float z, float w) {
    float4 f;
    f.x = x; f.y = y; f.z = z; f.w = w;
    return f;
}

__device__ __forceinline__ unsigned wkv_smem(const void* p) {
    unsigned a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// One chunk of the six inputs, global -> shared by cp.async (no registers: the copies cannot be
// sunk to their use by the compiler, as register-staged loads were, leaving each chunk waiting on
// memory).  The chunk is 6 x WKV_CH x 16 float4; copy f = u NT + tid is input f / (16 WKV_CH),
// token (f / 16) % WKV_CH, float4 f % 16.  Tokens past t1 are zero-filled (src-size 0), unread.
template <int NT, int CH>
__device__ __forceinline__ void wkv_fetch(float (*dst)[CH][64], const float* const* in, long ld, int o,
                                          int c0, int t1) {
    static_assert((6 * CH * 16) % NT == 0, "whole copies per thread");
    const int tid = threadIdx.x;
    for (int u = 0; u < 6 * CH * 16 / NT; u++) {
        const int f = u * NT + tid, src = f / (16 * CH), tt = (f >> 4) % CH, c4 = f & 15;
        const bool ok = c0 + tt < t1;
        const float* g = in[src] + (ok ? (long)(c0 + tt) * ld + o + 4 * c4 : 0);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                     :: "r"(wkv_smem(&dst[src][tt][4 * c4])), "l"(g), "r"(ok ? 16 : 0) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// L threads per state row: thread (i, q) = (row0 + tid / L, tid % L) owns row i at the columns
// 4 L m + 4 q + c (m < 16 / L, c < 4), so the L threads of a row read 16 L consecutive bytes.
template <int L, int CH>
__device__ __forceinline__ void wkv_token(float* st, const float (*in)[CH][64], int tt, int i, int q,
                                          float* yrow, int o) {
    constexpr int M = 16 / L;
    const float vi = in[5][tt][i];
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int m = 0; m < M; m++) {
        const float4 a4 = *reinterpret_cast<const float4*>(&in[0][tt][4 * L * m + 4 * q]);
        s0 = fmaf(st[4 * m], a4.x, s0);
        s1 = fmaf(st[4 * m + 1], a4.y, s1);
        s0 = fmaf(st[4 * m + 2], a4.z, s0);
        s1 = fmaf(st[4 * m + 3], a4.w, s1);
    }
    float sa = s0 + s1;
#pragma unroll
    for (int x = 1; x < L; x <<= 1) sa += wkv_xor(sa, x);
    float y0 = 0.0f, y1 = 0.0f;
#pragma unroll
    for (int m = 0; m < M; m++) {
        const int j = 4 * L * m + 4 * q;
        const float4 w4 = *reinterpret_cast<const float4*>(&in[2][tt][j]);
        const float4 b4 = *reinterpret_cast<const float4*>(&in[1][tt][j]);
        const float4 k4 = *reinterpret_cast<const float4*>(&in[3][tt][j]);
        const float4 r4 = *reinterpret_cast<const float4*>(&in[4][tt][j]);
        float* s = st + 4 * m;
        s[0] = s[0] * w4.x + sa * b4.x + vi * k4.x;
        s[1] = s[1] * w4.y + sa * b4.y + vi * k4.y;
        s[2] = s[2] * w4.z + sa * b4.z + vi * k4.z;
        s[3] = s[3] * w4.w + sa * b4.w + vi * k4.w;
        y0 = fmaf(s[0], r4.x, y0);
        y1 = fmaf(s[1], r4.y, y1);
        y0 = fmaf(s[2], r4.z, y0);
        y1 = fmaf(s[3], r4.w, y1);
    }
    float acc = y0 + y1;
#pragma unroll
    for (int x = 1; x < L; x <<= 1) acc += wkv_xor(acc, x);
    if (q == 0) yrow[o + i] = acc;
}

template <int L, bool UNROLL, int CH>
__device__ __forceinline__ void wkv_rows(const float* r, const float* w, const float* k, const float* v,
                                         const float* a, const float* b, long ld, int t0, int t1, float* S,
                                         long soff, float* y, long ldy, int o, int row0) {
    constexpr int NT = L * WKV_ROWS, M = 16 / L;
    __shared__ __align__(16) float buf[2][6][CH][64];
    const int tid = threadIdx.x, i = row0 + tid / L, q = tid % L;
    const float* in[6] = {a, b, w, k, r, v};
    float* Srow = S + soff + (long)i * 64;
    float st[16 / L * 4];
#pragma unroll
    for (int m = 0; m < M; m++) {
        const float4 s4 = *reinterpret_cast<const float4*>(Srow + 4 * L * m + 4 * q);
        st[4 * m] = s4.x; st[4 * m + 1] = s4.y; st[4 * m + 2] = s4.z; st[4 * m + 3] = s4.w;
    }
    if (t0 < t1) wkv_fetch<NT, CH>(buf[0], in, ld, o, t0, t1);
    int p = 0;
    for (int c0 = t0; c0 < t1; c0 += CH) {
        asm volatile("cp.async.wait_group 0;" ::: "memory");    // this thread's copies of chunk c0 ...
        __syncthreads();             // ... and everyone's; the other buffer's last chunk is consumed
        if (c0 + CH < t1) wkv_fetch<NT, CH>(buf[p ^ 1], in, ld, o, c0 + CH, t1);
        const int n = min(CH, t1 - c0);
        if (UNROLL && n == CH) {
#pragma unroll
            for (int tt = 0; tt < CH; tt++) wkv_token<L, CH>(st, buf[p], tt, i, q, y + (long)(c0 + tt) * ldy, o);
        } else {
            for (int tt = 0; tt < n; tt++) wkv_token<L, CH>(st, buf[p], tt, i, q, y + (long)(c0 + tt) * ldy, o);
        }
        p ^= 1;
    }
#pragma unroll
    for (int m = 0; m < M; m++)
        *reinterpret_cast<float4*>(Srow + 4 * L * m + 4 * q) = wkv_f4(st[4 * m], st[4 * m + 1], st[4 * m + 2], st[4 * m + 3]);
}

#define WKV_ENTRY(name, L, UNROLL, CH)                                                                        \
extern "C" __device__ int name(int* ret, const float* r, const float* w, const float* k, const float* v,  \
                               const float* a, const float* b, long ld, int t0, int t1, float* S,         \
                               long soff, float* y, long ldy, int o, int row0) {                           \
    wkv_rows<L, UNROLL, CH>(r, w, k, v, a, b, ld, t0, t1, S, soff, y, ldy, o, row0);                           \
    *ret = 0;                                                                                               \
    return 0;                                                                                               \
}
// 4 threads per row (8 measured slower: one more shuffle level per dot product); a chunk's tokens
// unrolled (1.5B prefill-512, H100: 128.6 -> 104.8 us a layer, same bits: token t+1's loads and
// partial dots overlap token t's shuffles); chunks of 4 or 16 tokens measured slower than 8.
WKV_ENTRY(wkv7_64c, 4, true, WKV_CH)
