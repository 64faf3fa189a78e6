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

__device__ __forceinline__ unsigned tc_pack(h16 lo, h16 hi) {     // lo in the low 16 bits
    return (unsigned)lo | ((unsigned)hi << 16);
}

__device__ __forceinline__ uint2 tc_u2(unsigned a, unsigned b) {
    uint2 u;
    u.x = a;
    u.y = b;
    return u;
}

__device__ __forceinline__ float tc_bf16(float v) {        // round to bfloat16, nearest even
    unsigned b = __float_as_uint(v);
    b = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
    return __uint_as_float(b);
}

__device__ __forceinline__ float tc_act(float v, int act) {
    if (act == 1) return tanhf(v);
    if (act == 2) return 1.0f / (1.0f + expf(-v));
    return v;
}

// act as above in bits 0-3; bits 4-7 a rounding of its result for llama numerics (3: to f16, 4: to
// bf16; actquant.R_F16 / R_BF16).  Only split_x and round_x take these: in the register-staged
// tile's loads the extra code made the low-rank GEMMs 1.5-2x slower (ncu, 1.5B prefill).
__device__ __forceinline__ float tc_act_r(float v, int act) {
    v = tc_act(v, act & 15);
    const int r = (act >> 4) & 15;
    if (r == 3) v = tc_h2f(tc_f2h(v));
    else if (r == 4) v = tc_bf16(v);
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

// Four 8x8 matrices of halves from shared memory (each lane gives one 16-byte row address); lane l
// receives, of each matrix, row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1: the mma fragment layout.
__device__ __forceinline__ unsigned tc_smem(const void* p) {
    unsigned a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void tc_ldsm4(unsigned* r, const h16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(tc_smem(p)) : "memory");
}

// A warp's 32 x 32 accumulators to out rows t0.., columns n0.. (epi: 0 store, 1 add, 2 relu^2 store)
__device__ __forceinline__ void tc_store(float (&acc)[2][4][4], float* out, long ldo, int T, int N, int t0, int n0,
                                         int epi) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int t = t0 + 16 * i + g + (e >> 1) * 8;
                const int n = n0 + 8 * j + 2 * q + (e & 1);
                if (t < T && n < N) {
                    float v = acc[i][j][e];
                    float* o = out + (long)t * ldo + n;
                    if (epi == 1) *o += v;
                    else if (epi == 2) { v = fmaxf(v, 0.0f); *o = v * v; }
                    else *o = v;
                }
            }
}

template <bool W_HALF>
struct TcStage {                // one thread's share of a 64 x 32 X tile and W tile, held in registers
    float x[16];
    float w[16];
    uint2 w16[4];               // F16 weights: 4 halves per word pair, as loaded
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
                st.w16[l] = *reinterpret_cast<const uint2*>(W + (long)(n0 + r) * ldw + k);
            } else {
                h16 e[4];
                for (int u = 0; u < 4; u++)
                    e[u] = (n0 + r < N && k + u < kend) ? W[(long)(n0 + r) * ldw + k + u] : (h16)0;
                st.w16[l] = tc_u2(tc_pack(e[0], e[1]), tc_pack(e[2], e[3]));
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
                        int T, int N, int K, int kc, int act, int epi, int bx, int by, int bz, int nz) {
    __shared__ __align__(16) h16 Ah[TC_BM * TC_LDS];
    __shared__ __align__(16) h16 Al[TC_BM * TC_LDS];
    __shared__ __align__(16) h16 Bh[TC_BN * TC_LDS];
    __shared__ __align__(16) h16 Bl[TC_BN * TC_LDS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int m0 = by * TC_BM, n0 = bx * TC_BN;
    // split K: slice bz of nz sums k in [bz kc, (bz+1) kc) into its own slice of out (the caller's partials)
    const int kbeg = bz * kc, kend = min(K, kbeg + kc);
    if (nz > 1) out += (long)bz * T * ldo;
    const bool vec = (ldx % 4 == 0) && (ldw % 4 == 0) && ((((unsigned long)X) & 15) == 0)
                     && ((((unsigned long)Wv) & (W_HALF ? 7 : 15)) == 0);

    float acc[2][4][4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    TcStage<W_HALF> st;
    if (kbeg < kend) tc_fetch<W_HALF>(st, X, ldx, Wv, ldw, T, N, kend, m0, n0, kbeg, act, vec);
    for (int k0 = kbeg; k0 < kend; k0 += TC_BK) {
        for (int l = 0; l < 4; l++) {         // 4 consecutive halves per 8-byte shared store
            const int f = tid + 128 * l, r = f >> 3, c = (f & 7) * 4;
            const int s = r * TC_LDS + c;
            h16 hx[4], lx[4];
            for (int u = 0; u < 4; u++) {
                const float v = st.x[4 * l + u];
                hx[u] = tc_f2h(v);
                lx[u] = tc_f2h(v - tc_h2f(hx[u]));
            }
            *reinterpret_cast<uint2*>(Ah + s) = tc_u2(tc_pack(hx[0], hx[1]), tc_pack(hx[2], hx[3]));
            *reinterpret_cast<uint2*>(Al + s) = tc_u2(tc_pack(lx[0], lx[1]), tc_pack(lx[2], lx[3]));
            if (W_HALF) {
                *reinterpret_cast<uint2*>(Bh + s) = st.w16[l];
            } else {
                h16 hw[4], lw[4];
                for (int u = 0; u < 4; u++) {
                    const float w = st.w[4 * l + u];
                    hw[u] = tc_f2h(w);
                    lw[u] = tc_f2h(w - tc_h2f(hw[u]));
                }
                *reinterpret_cast<uint2*>(Bh + s) = tc_u2(tc_pack(hw[0], hw[1]), tc_pack(hw[2], hw[3]));
                *reinterpret_cast<uint2*>(Bl + s) = tc_u2(tc_pack(lw[0], lw[1]), tc_pack(lw[2], lw[3]));
            }
        }
        __syncthreads();
        if (k0 + TC_BK < kend)      // next tile's global loads overlap this tile's MMAs
            tc_fetch<W_HALF>(st, X, ldx, Wv, ldw, T, N, kend, m0, n0, k0 + TC_BK, act, vec);
        for (int kk = 0; kk < TC_BK; kk += 16) {
            unsigned ah[2][4], al[2][4], bh[4][2], bl[4][2];
            // ldmatrix: lanes 0-15 address rows 0-15 at k, lanes 16-31 the same rows at k + 8
            for (int i = 0; i < 2; i++) {
                const int o = (wm + 16 * i + (lane & 15)) * TC_LDS + kk + (lane >> 4) * 8;
                tc_ldsm4(ah[i], Ah + o);
                tc_ldsm4(al[i], Al + o);
            }
            // B, two n-groups of 8 per ldmatrix: lanes 0-7 / 8-15 rows n..n+7 at k / k + 8,
            // lanes 16-23 / 24-31 rows n+8..n+15 at k / k + 8
            for (int j = 0; j < 4; j += 2) {
                const int o = (wn + 8 * j + (lane & 7) + ((lane >> 4) << 3)) * TC_LDS + kk + ((lane >> 3) & 1) * 8;
                unsigned u[4];
                tc_ldsm4(u, Bh + o);
                bh[j][0] = u[0]; bh[j][1] = u[1]; bh[j + 1][0] = u[2]; bh[j + 1][1] = u[3];
                if (!W_HALF) {
                    tc_ldsm4(u, Bl + o);
                    bl[j][0] = u[0]; bl[j][1] = u[1]; bl[j + 1][0] = u[2]; bl[j + 1][1] = u[3];
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
    tc_store(acc, out, ldo, T, N, m0 + wm, n0 + wn, epi);
}

// (bx, by): the 64 x 64 output tile; kc: the K range of split-K slice bz of nz (nz > 1: out is
// [nz, T, ldo] partial sums, epi 0).  The caller maps its grid onto these (grouped launches).
extern "C" __device__ int tc_gemm_f32w(int* ret, const float* X, long ldx, const float* W, long ldw,
                                       float* out, long ldo, int T, int N, int K, int kc, int act, int epi,
                                       int bx, int by, int bz, int nz) {
    tc_tile<false>(X, ldx, W, ldw, out, ldo, T, N, K, kc, act, epi, bx, by, bz, nz);
    *ret = 0;
    return 0;
}

// W: IEEE halves (their bits), exact in one f16: two MMAs per product instead of three.
extern "C" __device__ int tc_gemm_f16w(int* ret, const float* X, long ldx, const unsigned short* W, long ldw,
                                       float* out, long ldo, int T, int N, int K, int kc, int act, int epi,
                                       int bx, int by, int bz, int nz) {
    tc_tile<true>(X, ldx, W, ldw, out, ldo, T, N, K, kc, act, epi, bx, by, bz, nz);
    *ret = 0;
    return 0;
}


// ---------------------------------------------------------------------------------------------
// Half-operand GEMM: the same 64 x 64 tile, 4 warps and MMA layout as tc_tile, but both operands
// arrive as halves already split (x by tc_split_x, once per product; F16 weights as stored;
// other weights expanded to hi/lo halves), so a tile is copied global -> shared with cp.async
// (16 bytes per copy, no registers, no conversion) through a ring of HG_S stages: the copies of
// the next stages are in flight while this stage's MMAs run.  The tile above spent most of its
// time converting and staging float32 x (ncu, 1.5B prefill: 25% issue-slot use, 12% occupancy).
//   A_LO: x has a low half (exact float32 products); B_LO: W has one (float32-exact weights).
// Requires K % 8 == 0 and 16-byte aligned rows (ldx % 8 == 0, ldw % 8 == 0): the caller checks.

#define HG_BK 32

__device__ __forceinline__ void tc_cp16(h16* dst, const h16* src, bool ok) {
    // src-size 0 zero-fills the 16 bytes (rows past T or N, k past the end) without reading
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(tc_smem(dst)), "l"(src), "r"(ok ? 16 : 0) : "memory");
}

__device__ __forceinline__ void tc_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void tc_cp_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

template <bool A_LO, bool B_LO, int BM, int BN, int NT>
__device__ __forceinline__ void hg_load(h16* sAh, h16* sAl, h16* sBh, h16* sBl,
                                        const h16* Xh, const h16* Xl, long ldx, const h16* Wh, const h16* Wl,
                                        long ldw, int T, int N, int kend, int m0, int n0, int k0) {
    const int tid = threadIdx.x;
    for (int f = tid; f < BM * 4; f += NT) {             // x: BM rows x 4 chunks of 8 halves
        const int r = f >> 2, c = (f & 3) * 8, k = k0 + c;
        const bool ok = m0 + r < T && k < kend;
        const long ox = ok ? (long)(m0 + r) * ldx + k : 0;
        tc_cp16(sAh + r * TC_LDS + c, Xh + ox, ok);
        if (A_LO) tc_cp16(sAl + r * TC_LDS + c, Xl + ox, ok);
    }
    for (int f = tid; f < BN * 4; f += NT) {             // W: BN rows x 4 chunks
        const int r = f >> 2, c = (f & 3) * 8, k = k0 + c;
        const bool ok = n0 + r < N && k < kend;
        const long ow = ok ? (long)(n0 + r) * ldw + k : 0;
        tc_cp16(sBh + r * TC_LDS + c, Wh + ow, ok);
        if (B_LO) tc_cp16(sBl + r * TC_LDS + c, Wl + ow, ok);
    }
}

// Shared memory of a BM x BN tile's S stages (bytes): hi (and lo) halves of x and of W per stage
template <bool A_LO, bool B_LO, int BM, int BN, int S>
struct HgSmem {
    static constexpr int TA = BM * TC_LDS, TB = BN * TC_LDS;
    static constexpr int halves = S * (TA * (A_LO ? 2 : 1) + TB * (B_LO ? 2 : 1));
    static constexpr int bytes = 2 * halves;
};

extern __shared__ __align__(16) h16 hg_dyn[];          // the big tiles' stages (dynamic: over 48 KB)

// A BM x BN tile, warps of F x F quarters of 32 x 32 (each quarter 2 x 4 MMAs per 16 of k), NT
// threads = 32 (BM / 32F) (BN / 32F), S stages, in static shared memory or (DYN) in the launch's
// dynamic shared memory (HgSmem bytes; the kernel opted in to over 48 KB).  Every output is
// accumulated over k in the same order, MMA after MMA, whatever the tile shape: same bits.
//   64 x 64, F 1: 128 threads.  64 x 128, F 1: 256 threads; each x tile serves twice the outputs
//   (at 64 x 64 the 1.5B prefill GEMMs ran at 71% of L2 bandwidth, ncu, x re-read per 64 outputs).
//   128 x 128, F 2: 128 threads, 64 x 64 per warp (ldmatrix per MMA halved), 4 stages dynamic.
template <bool A_LO, bool B_LO, int BM, int BN, int F, int S, bool DYN>
__device__ void hg_tile(const h16* Xh, const h16* Xl, long ldx, const h16* Wh, const h16* Wl, long ldw,
                        float* out, long ldo, int T, int N, int K, int kc, int epi, int bx, int by, int bz, int nz) {
    typedef HgSmem<A_LO, B_LO, BM, BN, S> Sm;
    constexpr int TA = Sm::TA, TB = Sm::TB;
    constexpr int WN = BN / (32 * F), NT = 32 * WN * (BM / (32 * F));
    static_assert(DYN || Sm::bytes <= 48 * 1024, "static shared memory is 48 KB at most");
    __shared__ __align__(16) h16 s_st[DYN ? 8 : Sm::halves];
    h16* const sAh = DYN ? hg_dyn : s_st;
    h16* const sAl = sAh + S * TA;                       // (unused unless A_LO)
    h16* const sBh = sAl + (A_LO ? S * TA : 0);
    h16* const sBl = sBh + S * TB;                       // (unused unless B_LO)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp / WN) * 32 * F, wn = (warp % WN) * 32 * F;
    const int m0 = by * BM, n0 = bx * BN;
    const int kbeg = bz * kc, kend = min(K, kbeg + kc);
    if (nz > 1) out += (long)bz * T * ldo;
    const int nk = kend > kbeg ? (kend - kbeg + HG_BK - 1) / HG_BK : 0;

    float acc[F][F][2][4][4] = {};

    for (int st = 0; st < S - 1; st++) {
        if (st < nk)
            hg_load<A_LO, B_LO, BM, BN, NT>(sAh + st * TA, sAl + st * TA, sBh + st * TB, sBl + st * TB,
                                            Xh, Xl, ldx, Wh, Wl, ldw, T, N, kend, m0, n0, kbeg + st * HG_BK);
        tc_cp_commit();
    }
    for (int it = 0; it < nk; it++) {
        tc_cp_wait<S - 2>();         // stage `it` has landed (this thread's copies) ...
        __syncthreads();             // ... everyone's; and stage it-1 is consumed by every warp
        {
            const int nx = it + S - 1, b = nx % S;
            if (nx < nk)
                hg_load<A_LO, B_LO, BM, BN, NT>(sAh + b * TA, sAl + b * TA, sBh + b * TB, sBl + b * TB,
                                                Xh, Xl, ldx, Wh, Wl, ldw, T, N, kend, m0, n0, kbeg + nx * HG_BK);
            tc_cp_commit();
        }
        const int b = it % S;
        const h16* Ah = sAh + b * TA;
        const h16* Al = sAl + b * TA;
        const h16* Bh = sBh + b * TB;
        const h16* Bl = sBl + b * TB;
        #pragma unroll
        for (int kk = 0; kk < HG_BK; kk += 16) {
            unsigned ah[F][2][4], al[F][2][4], bh[F][4][2], bl[F][4][2];
            #pragma unroll
            for (int fi = 0; fi < F; fi++)
                #pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int o = (wm + 32 * fi + 16 * i + (lane & 15)) * TC_LDS + kk + (lane >> 4) * 8;
                    tc_ldsm4(ah[fi][i], Ah + o);
                    if (A_LO) tc_ldsm4(al[fi][i], Al + o);
                }
            #pragma unroll
            for (int fj = 0; fj < F; fj++)
                #pragma unroll
                for (int j = 0; j < 4; j += 2) {
                    const int o = (wn + 32 * fj + 8 * j + (lane & 7) + ((lane >> 4) << 3)) * TC_LDS + kk
                                  + ((lane >> 3) & 1) * 8;
                    unsigned u[4];
                    tc_ldsm4(u, Bh + o);
                    bh[fj][j][0] = u[0]; bh[fj][j][1] = u[1]; bh[fj][j + 1][0] = u[2]; bh[fj][j + 1][1] = u[3];
                    if (B_LO) {
                        tc_ldsm4(u, Bl + o);
                        bl[fj][j][0] = u[0]; bl[fj][j][1] = u[1]; bl[fj][j + 1][0] = u[2]; bl[fj][j + 1][1] = u[3];
                    }
                }
            #pragma unroll
            for (int fi = 0; fi < F; fi++)
                #pragma unroll
                for (int fj = 0; fj < F; fj++)
                    #pragma unroll
                    for (int i = 0; i < 2; i++)
                        #pragma unroll
                        for (int j = 0; j < 4; j++) {        // small terms first, as tc_tile
                            if (B_LO) tc_mma(acc[fi][fj][i][j], ah[fi][i], bl[fj][j]);
                            if (A_LO) tc_mma(acc[fi][fj][i][j], al[fi][i], bh[fj][j]);
                            tc_mma(acc[fi][fj][i][j], ah[fi][i], bh[fj][j]);
                        }
        }
    }
    #pragma unroll
    for (int fi = 0; fi < F; fi++)
        #pragma unroll
        for (int fj = 0; fj < F; fj++)
            tc_store(acc[fi][fj], out, ldo, T, N, m0 + wm + 32 * fi, n0 + wn + 32 * fj, epi);
}

// The stage counts of the static tiles: what fits 48 KB (64 x 64: 3 x 15 KB, or 2 x 20 KB with both
// lo halves; 64 x 128: 2 x 20 KB with x's lo halves; one-half operands 3 x 10 KB, 3 x 15 KB)
template <bool A_LO, bool B_LO, int BN>
__device__ __forceinline__ void hg_tile64(const h16* Xh, const h16* Xl, long ldx, const h16* Wh, const h16* Wl,
                                          long ldw, float* out, long ldo, int T, int N, int K, int kc, int epi,
                                          int bx, int by, int bz, int nz) {
    constexpr int S = ((BN == 128 && A_LO) || (A_LO && B_LO)) ? 2 : 3;
    hg_tile<A_LO, B_LO, 64, BN, 1, S, false>(Xh, Xl, ldx, Wh, Wl, ldw, out, ldo, T, N, K, kc, epi, bx, by, bz, nz);
}

// x [T, K] float32 halves (hi, lo) x F16 W [N, K] (its bits): exact float32 products, 2 MMAs each
extern "C" __device__ int tc_hgemm_x2(int* ret, const h16* Xh, const h16* Xl, long ldx, const h16* W, long ldw,
                                      float* out, long ldo, int T, int N, int K, int kc, int epi,
                                      int bx, int by, int bz, int nz) {
    hg_tile64<true, false, 64>(Xh, Xl, ldx, W, W, ldw, out, ldo, T, N, K, kc, epi, bx, by, bz, nz);
    *ret = 0;
    return 0;
}

// as tc_hgemm_x2 on 64 x 128 tiles (256 threads): for grids that still fill the GPU
extern "C" __device__ int tc_hgemm_x2n(int* ret, const h16* Xh, const h16* Xl, long ldx, const h16* W, long ldw,
                                       float* out, long ldo, int T, int N, int K, int kc, int epi,
                                       int bx, int by, int bz, int nz) {
    hg_tile64<true, false, 128>(Xh, Xl, ldx, W, W, ldw, out, ldo, T, N, K, kc, epi, bx, by, bz, nz);
    *ret = 0;
    return 0;
}

// x as f16 (its hi halves only; llama numerics, where x is rounded to f16 before the product as
// llama.cpp does against F16 weights) x F16 W: one MMA per product, exact products in float32
extern "C" __device__ int tc_hgemm_h1(int* ret, const h16* Xh, long ldx, const h16* W, long ldw,
                                      float* out, long ldo, int T, int N, int K, int kc, int epi,
                                      int bx, int by, int bz, int nz) {
    hg_tile64<false, false, 64>(Xh, Xh, ldx, W, W, ldw, out, ldo, T, N, K, kc, epi, bx, by, bz, nz);
    *ret = 0;
    return 0;
}

extern "C" __device__ int tc_hgemm_h1n(int* ret, const h16* Xh, long ldx, const h16* W, long ldw,
                                       float* out, long ldo, int T, int N, int K, int kc, int epi,
                                       int bx, int by, int bz, int nz) {
    hg_tile64<false, false, 128>(Xh, Xh, ldx, W, W, ldw, out, ldo, T, N, K, kc, epi, bx, by, bz, nz);
    *ret = 0;
    return 0;
}

// 128 x 128 tiles (128 threads, 64 x 64 per warp) with their stages in dynamic shared memory
// (HgSmem bytes at launch): ~1.5x the MMAs per byte of x and W read from L2 of the 64 x 128 tile.
// Suffix: h1 one-half x (llama numerics, F16 W), x2 x halves (exact, F16 W); then the stages.
#define HG_BIG(name, A_LO, S)                                                                             \
extern "C" __device__ int name(int* ret, const h16* Xh, const h16* Xl, long ldx, const h16* W, long ldw,  \
                               float* out, long ldo, int T, int N, int K, int kc, int epi,                \
                               int bx, int by, int bz, int nz) {                                          \
    hg_tile<A_LO, false, 128, 128, 2, S, true>(Xh, Xl, ldx, W, W, ldw, out, ldo, T, N, K, kc, epi,       \
                                              bx, by, bz, nz);                                            \
    *ret = 0;                                                                                             \
    return 0;                                                                                             \
}
HG_BIG(tc_hgemm_h1b4, false, 4)
HG_BIG(tc_hgemm_h1b3, false, 3)
HG_BIG(tc_hgemm_x2b3, true, 3)
HG_BIG(tc_hgemm_x2b2, true, 2)

// x halves (hi, lo) x W halves (hi, lo): float32 weights (or dequantized blocks) split once, 3 MMAs
extern "C" __device__ int tc_hgemm_x2w2(int* ret, const h16* Xh, const h16* Xl, long ldx, const h16* Wh,
                                        const h16* Wl, long ldw, float* out, long ldo, int T, int N, int K, int kc,
                                        int epi, int bx, int by, int bz, int nz) {
    hg_tile64<true, true, 64>(Xh, Xl, ldx, Wh, Wl, ldw, out, ldo, T, N, K, kc, epi, bx, by, bz, nz);
    *ret = 0;
    return 0;
}

// v -> (hi, lo) halves packed in one word (hi in the low 16 bits): v = hi + lo to ~22 bits
extern "C" __device__ int tc_hilo(unsigned* ret, float v) {
    const h16 h = tc_f2h(v);
    *ret = tc_pack(h, tc_f2h(v - tc_h2f(h)));
    return 0;
}

// 4 consecutive k of one row of act(X) -> hi and lo halves; thread idx of T * K / 4 (K % 4 == 0)
extern "C" __device__ int tc_split_x(int* ret, const float* X, long ldx, h16* H, h16* L, long ldh,
                                     int T, int K, int act, long idx) {
    *ret = 0;
    const long per = K >> 2;
    const long t = idx / per;
    if (t >= T) return 0;
    const int k = (int)(idx - t * per) * 4;
    const float* x = X + t * ldx + k;
    float v[4];
    if ((((unsigned long)x) & 15) == 0) {
        const float4 f = *reinterpret_cast<const float4*>(x);
        v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
    } else {
        for (int u = 0; u < 4; u++) v[u] = x[u];
    }
    h16 hi[4], lo[4];
    for (int u = 0; u < 4; u++) {
        const float a = tc_act_r(v[u], act);
        hi[u] = tc_f2h(a);
        lo[u] = tc_f2h(a - tc_h2f(hi[u]));
    }
    *reinterpret_cast<uint2*>(H + t * ldh + k) = tc_u2(tc_pack(hi[0], hi[1]), tc_pack(hi[2], hi[3]));
    if (!(act & 256))                   // bit 8: the hi halves alone (x already in f16: one-MMA tiles)
        *reinterpret_cast<uint2*>(L + t * ldh + k) = tc_u2(tc_pack(lo[0], lo[1]), tc_pack(lo[2], lo[3]));
    return 0;
}

// ---------------------------------------------------------------------------------------------
// llama numerics: Y = round(act(X)) as llama.cpp's CPU backend rounds an activation row before
// its dot products with a weight (rwkvcpu/kernels/actquant.py has the table and the CPU twin).
// mode: 0 none, 1 Q8_0 (per 32), 2 Q8_K (per 256), 3 F16, 4 BF16; thread idx owns one block of
// a row (one value for modes 0, 3, 4).  Row lengths the block does not divide are left as they are.

__device__ __forceinline__ float tc_rint(float v) {
    float r;
    asm("cvt.rni.f32.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}

__device__ __forceinline__ float tc_div(float a, float b) {     // IEEE division, whatever the flags
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float tc_mul(float a, float b) {     // never contracted into an FMA
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

extern "C" __device__ int tc_round_x(int* ret, const float* X, long ldx, float* Y, long ldy, int T, int K,
                                     int act, int mode, long idx) {
    *ret = 0;
    const int blk = mode == 1 ? 32 : (mode == 2 ? 256 : 4);
    const int whole = (K % blk == 0);
    const long per = whole ? K / blk : K;
    const long t = idx / per;
    if (t >= T) return 0;
    const int n = whole ? blk : 1;
    const int k0 = (int)(idx - t * per) * n;
    const float* x = X + t * ldx + k0;
    float* y = Y + t * ldy + k0;
    if (!whole) {
        y[0] = mode > 2 ? tc_act_r(x[0], act | (mode << 4)) : tc_act(x[0], act);
        return 0;
    }
    if (mode == 0 || mode > 2) {        // element-wise: 4 values
        for (int i = 0; i < 4; i++) y[i] = tc_act_r(x[i], act | (mode << 4));
        return 0;
    }
    float amax = 0.0f, mx = 0.0f;
    for (int i = 0; i < n; i++) {
        const float v = tc_act(x[i], act), a = fabsf(v);
        if (a > amax) { amax = a; mx = v; }
    }
    if (mode == 1) {                    // Q8_0: d = f16(amax / 127), q = rint(x * 127 / amax)
        const float d = tc_h2f(tc_f2h(tc_div(amax, 127.0f)));
        const float id = amax > 0.0f ? tc_div(127.0f, amax) : 0.0f;
        for (int i = 0; i < n; i++) y[i] = tc_mul(d, tc_rint(tc_mul(tc_act(x[i], act), id)));
        return 0;
    }
    if (amax == 0.0f) {                 // Q8_K: iscale = -127 / max (signed), d = 1 / iscale
        for (int i = 0; i < n; i++) y[i] = 0.0f;
        return 0;
    }
    const float is = tc_div(-127.0f, mx), d = tc_div(1.0f, is);
    for (int i = 0; i < n; i++) y[i] = tc_mul(d, fminf(127.0f, tc_rint(tc_mul(is, tc_act(x[i], act)))));
    return 0;
}
