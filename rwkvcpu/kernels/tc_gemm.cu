// Tensor-core GEMM tile for rwkvcpu's CUDA backend (rwkvcpu/kernels/cuda.py links this file into a
// numba.cuda kernel through NVRTC; numba-cuda has no matrix-multiply-accumulate intrinsic of its own).
//
//   out[t, n] (epi)= sum_k act(X[t, k]) * W[n, k]      X: [T, K] float32, W: [N, K] float32 or float16
//
// One block of 128 threads (4 warps) computes a 64 x 64 tile of out; each warp a 32 x 32 quarter as
// 2 x 4 tensor-core MMAs (PTX mma.sync m16n8k16, f16 inputs, float32 accumulators) per 16 of K.
// Inline PTX only, no CUDA headers: NVRTC then needs no include path (pip-installed CUDA lacks some).  Precision: float32 values are split into
// two halves, v = hi + lo (hi = f16(v), lo = f16(v - hi)), which carries ~22 significant bits, and
// the products hi*hi + lo*hi + hi*lo are summed in float32 (lo*lo, below 2^-22 relative, is dropped).
// F16 weights are exact in one half (lo = 0), so their product takes two MMAs instead of three.
// The result is float32 GEMM accuracy up to summation order, not a float16 GEMM.
//
// act: 0 none, 1 tanh, 2 sigmoid (applied to X as it is loaded); epi: 0 store, 1 add, 2 relu^2 store.
// Numba's foreign-function ABI: int return (0), first argument a pointer to the (unused) result.

#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_LDS (TC_BK + 8)     // halves per shared row: 80 bytes, so the 8 rows a fragment load touches
                               // fall in different banks

typedef unsigned short h16;

__device__ __forceinline__ h16 tc_f2h(float v) {
    h16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

__device__ __forceinline__ float tc_h2f(h16 h) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
}

__device__ __forceinline__ float tc_act(float v, int act) {
    if (act == 1) return tanhf(v);
    if (act == 2) return 1.0f / (1.0f + expf(-v));
    return v;
}

// D = A (16x16, row) * B (16x8, col) + D.  Fragment layout (PTX ISA, mma.m16n8k16 .f16): with
// g = lane / 4 and q = lane % 4, a[0..3] hold A's (row, k) pairs (g, 2q), (g+8, 2q), (g, 2q+8),
// (g+8, 2q+8); b[0..1] hold B's (k, col) pairs (2q, g), (2q+8, g); d[0..3] are D's (g, 2q), (g, 2q+1),
// (g+8, 2q), (g+8, 2q+1).
__device__ __forceinline__ void tc_mma(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ unsigned tc_pair(const h16* s, int row, int k) {
    return *reinterpret_cast<const unsigned*>(s + row * TC_LDS + k);
}

template <bool W_HALF>
struct TcStage {                // one thread's share of a 64 x 32 X tile and W tile, held in registers
    float x[16];
    float w[16];
    h16 w16[16];
};

template <bool W_HALF>
__device__ __forceinline__ void tc_fetch(TcStage<W_HALF>& st, const float* X, long ldx, const void* Wv, long ldw,
                                         int T, int N, int kend, int m0, int n0, int k0, int act, bool vec) {
    const int tid = threadIdx.x;
    for (int l = 0; l < 4; l++) {
        const int f = tid + 128 * l, r = f >> 3, c = (f & 7) * 4, k = k0 + c;
        // X: 4 consecutive k of row m0 + r
        if (m0 + r < T && vec && k + 3 < kend) {
            const float4 v = *reinterpret_cast<const float4*>(X + (long)(m0 + r) * ldx + k);
            st.x[4 * l] = tc_act(v.x, act); st.x[4 * l + 1] = tc_act(v.y, act);
            st.x[4 * l + 2] = tc_act(v.z, act); st.x[4 * l + 3] = tc_act(v.w, act);
        } else {
            for (int u = 0; u < 4; u++)
                st.x[4 * l + u] = (m0 + r < T && k + u < kend) ? tc_act(X[(long)(m0 + r) * ldx + k + u], act) : 0.0f;
        }
        if (W_HALF) {
            const h16* W = static_cast<const h16*>(Wv);
            if (n0 + r < N && vec && k + 3 < kend) {
                const uint2 v = *reinterpret_cast<const uint2*>(W + (long)(n0 + r) * ldw + k);
                st.w16[4 * l] = (h16)(v.x & 0xFFFF); st.w16[4 * l + 1] = (h16)(v.x >> 16);
                st.w16[4 * l + 2] = (h16)(v.y & 0xFFFF); st.w16[4 * l + 3] = (h16)(v.y >> 16);
            } else {
                for (int u = 0; u < 4; u++)
                    st.w16[4 * l + u] = (n0 + r < N && k + u < kend) ? W[(long)(n0 + r) * ldw + k + u] : (h16)0;
            }
        } else {
            const float* W = static_cast<const float*>(Wv);
            if (n0 + r < N && vec && k + 3 < kend) {
                const float4 v = *reinterpret_cast<const float4*>(W + (long)(n0 + r) * ldw + k);
                st.w[4 * l] = v.x; st.w[4 * l + 1] = v.y; st.w[4 * l + 2] = v.z; st.w[4 * l + 3] = v.w;
            } else {
                for (int u = 0; u < 4; u++)
                    st.w[4 * l + u] = (n0 + r < N && k + u < kend) ? W[(long)(n0 + r) * ldw + k + u] : 0.0f;
            }
        }
    }
}

template <bool W_HALF>
__device__ void tc_tile(const float* X, long ldx, const void* Wv, long ldw, float* out, long ldo,
                        int T, int N, int K, int kc, int act, int epi) {
    __shared__ __align__(16) h16 Ah[TC_BM * TC_LDS];
    __shared__ __align__(16) h16 Al[TC_BM * TC_LDS];
    __shared__ __align__(16) h16 Bh[TC_BN * TC_LDS];
    __shared__ __align__(16) h16 Bl[TC_BN * TC_LDS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, q = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    // split K: block z sums k in [z kc, (z+1) kc) into its own slice of out (the caller's partials)
    const int kbeg = blockIdx.z * kc, kend = min(K, kbeg + kc);
    if (gridDim.z > 1) out += (long)blockIdx.z * T * ldo;
    const bool vec = (ldx % 4 == 0) && (ldw % 4 == 0) && ((((unsigned long)X) & 15) == 0)
                     && ((((unsigned long)Wv) & (W_HALF ? 7 : 15)) == 0);

    float acc[2][4][4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    TcStage<W_HALF> st;
    if (kbeg < kend) tc_fetch<W_HALF>(st, X, ldx, Wv, ldw, T, N, kend, m0, n0, kbeg, act, vec);
    for (int k0 = kbeg; k0 < kend; k0 += TC_BK) {
        for (int l = 0; l < 4; l++) {
            const int f = tid + 128 * l, r = f >> 3, c = (f & 7) * 4;
            for (int u = 0; u < 4; u++) {
                const int s = r * TC_LDS + c + u;
                const float v = st.x[4 * l + u];
                const h16 h = tc_f2h(v);
                Ah[s] = h;
                Al[s] = tc_f2h(v - tc_h2f(h));
                if (W_HALF) {
                    Bh[s] = st.w16[4 * l + u];
                } else {
                    const float w = st.w[4 * l + u];
                    const h16 wh = tc_f2h(w);
                    Bh[s] = wh;
                    Bl[s] = tc_f2h(w - tc_h2f(wh));
                }
            }
        }
        __syncthreads();
        if (k0 + TC_BK < kend)      // next tile's global loads overlap this tile's MMAs
            tc_fetch<W_HALF>(st, X, ldx, Wv, ldw, T, N, kend, m0, n0, k0 + TC_BK, act, vec);
        for (int kk = 0; kk < TC_BK; kk += 16) {
            unsigned ah[2][4], al[2][4], bh[4][2], bl[4][2];
            for (int i = 0; i < 2; i++) {
                const int r = wm + 16 * i + g;
                ah[i][0] = tc_pair(Ah, r, kk + 2 * q);
                ah[i][1] = tc_pair(Ah, r + 8, kk + 2 * q);
                ah[i][2] = tc_pair(Ah, r, kk + 2 * q + 8);
                ah[i][3] = tc_pair(Ah, r + 8, kk + 2 * q + 8);
                al[i][0] = tc_pair(Al, r, kk + 2 * q);
                al[i][1] = tc_pair(Al, r + 8, kk + 2 * q);
                al[i][2] = tc_pair(Al, r, kk + 2 * q + 8);
                al[i][3] = tc_pair(Al, r + 8, kk + 2 * q + 8);
            }
            for (int j = 0; j < 4; j++) {
                const int n = wn + 8 * j + g;
                bh[j][0] = tc_pair(Bh, n, kk + 2 * q);
                bh[j][1] = tc_pair(Bh, n, kk + 2 * q + 8);
                if (!W_HALF) {
                    bl[j][0] = tc_pair(Bl, n, kk + 2 * q);
                    bl[j][1] = tc_pair(Bl, n, kk + 2 * q + 8);
                }
            }
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 4; j++) {
                    if (!W_HALF) tc_mma(acc[i][j], ah[i], bl[j]);
                    tc_mma(acc[i][j], al[i], bh[j]);
                    tc_mma(acc[i][j], ah[i], bh[j]);
                }
        }
        __syncthreads();
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            for (int e = 0; e < 4; e++) {
                const int t = m0 + wm + 16 * i + g + (e >> 1) * 8;
                const int n = n0 + wn + 8 * j + 2 * q + (e & 1);
                if (t < T && n < N) {
                    float v = acc[i][j][e];
                    float* o = out + (long)t * ldo + n;
                    if (epi == 1) *o += v;
                    else if (epi == 2) { v = fmaxf(v, 0.0f); *o = v * v; }
                    else *o = v;
                }
            }
}

// kc: the K range of one grid z-slice (gridDim.z > 1: out is [gridDim.z, T, ldo] partial sums, epi 0).
extern "C" __device__ int tc_gemm_f32w(int* ret, const float* X, long ldx, const float* W, long ldw,
                                       float* out, long ldo, int T, int N, int K, int kc, int act, int epi) {
    tc_tile<false>(X, ldx, W, ldw, out, ldo, T, N, K, kc, act, epi);
    *ret = 0;
    return 0;
}

// W: IEEE halves (their bits), exact in one f16: two MMAs per product instead of three.
extern "C" __device__ int tc_gemm_f16w(int* ret, const float* X, long ldx, const unsigned short* W, long ldw,
                                       float* out, long ldo, int T, int N, int K, int kc, int act, int epi) {
    tc_tile<true>(X, ldx, W, ldw, out, ldo, T, N, K, kc, act, epi);
    *ret = 0;
    return 0;
}
