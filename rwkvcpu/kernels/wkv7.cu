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
// in chunks of WKV_CH tokens (a, b, w, k, r, v; 12 float4 per thread per chunk), double-buffered
// in shared memory with one barrier per chunk, the next chunk's loads in flight while this one is
// computed.  The numba kernel it replaces read shared memory one float at a time: 80 load
// instructions per thread per token, which the shared-memory pipe serialised (~0.5 us a token);
// here 20 float4 loads, and the 4 threads of a row read 64 consecutive bytes (no bank conflicts).

#define WKV_CH 8
#define WKV_ROWS 16
#define WKV_THREADS (4 * WKV_ROWS)
#define WKV_STAGE (6 * WKV_CH * 16 / WKV_THREADS)      // float4 staged per thread per chunk

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

struct WkvIn {
    const float* p[6];          // a, b, w, k, r, v: [T, C] rows of stride ld
};

__device__ __forceinline__ void wkv_fetch(float4* stg, const WkvIn& in, long ld, int o, int c0, int t1) {
    const int tid = threadIdx.x;
    for (int u = 0; u < WKV_STAGE; u++) {
        const int f = tid + WKV_THREADS * u, src = f >> 7, rem = f & 127, tt = rem >> 4, c4 = rem & 15;
        const int t = c0 + tt;
        stg[u] = t < t1 ? *reinterpret_cast<const float4*>(in.p[src] + (long)t * ld + o + 4 * c4)
                        : wkv_f4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

extern "C" __device__ int wkv7_64c(int* ret, const float* r, const float* w, const float* k, const float* v,
                                   const float* a, const float* b, long ld, int t0, int t1, float* S, long soff,
                                   float* y, long ldy, int o, int row0) {
    __shared__ __align__(16) float buf[2][6][WKV_CH][64];
    *ret = 0;
    const int tid = threadIdx.x, i = row0 + (tid >> 2), q = tid & 3;
    WkvIn in;
    in.p[0] = a; in.p[1] = b; in.p[2] = w; in.p[3] = k; in.p[4] = r; in.p[5] = v;
    float* Srow = S + soff + (long)i * 64;
    float st[16];
    for (int m = 0; m < 4; m++) {
        const float4 s4 = *reinterpret_cast<const float4*>(Srow + 16 * m + 4 * q);
        st[4 * m] = s4.x; st[4 * m + 1] = s4.y; st[4 * m + 2] = s4.z; st[4 * m + 3] = s4.w;
    }
    float4 stg[WKV_STAGE];
    if (t0 < t1) wkv_fetch(stg, in, ld, o, t0, t1);
    int p = 0;
    for (int c0 = t0; c0 < t1; c0 += WKV_CH) {
        for (int u = 0; u < WKV_STAGE; u++) {
            const int f = tid + WKV_THREADS * u, src = f >> 7, rem = f & 127, tt = rem >> 4, c4 = rem & 15;
            *reinterpret_cast<float4*>(&buf[p][src][tt][4 * c4]) = stg[u];
        }
        __syncthreads();
        if (c0 + WKV_CH < t1) wkv_fetch(stg, in, ld, o, c0 + WKV_CH, t1);
        const int n = min(WKV_CH, t1 - c0);
        for (int tt = 0; tt < n; tt++) {
            const float vi = buf[p][5][tt][i];
            float s0 = 0.0f, s1 = 0.0f;
            for (int m = 0; m < 4; m++) {
                const float4 a4 = *reinterpret_cast<const float4*>(&buf[p][0][tt][16 * m + 4 * q]);
                s0 = fmaf(st[4 * m], a4.x, s0);
                s1 = fmaf(st[4 * m + 1], a4.y, s1);
                s0 = fmaf(st[4 * m + 2], a4.z, s0);
                s1 = fmaf(st[4 * m + 3], a4.w, s1);
            }
            float sa = s0 + s1;
            sa += wkv_xor(sa, 1);
            sa += wkv_xor(sa, 2);
            float y0 = 0.0f, y1 = 0.0f;
            for (int m = 0; m < 4; m++) {
                const int j = 16 * m + 4 * q;
                const float4 w4 = *reinterpret_cast<const float4*>(&buf[p][2][tt][j]);
                const float4 b4 = *reinterpret_cast<const float4*>(&buf[p][1][tt][j]);
                const float4 k4 = *reinterpret_cast<const float4*>(&buf[p][3][tt][j]);
                const float4 r4 = *reinterpret_cast<const float4*>(&buf[p][4][tt][j]);
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
            acc += wkv_xor(acc, 1);
            acc += wkv_xor(acc, 2);
            if (q == 0) y[(long)(c0 + tt) * ldy + o + i] = acc;
        }
        p ^= 1;
    }
    for (int m = 0; m < 4; m++)
        *reinterpret_cast<float4*>(Srow + 16 * m + 4 * q) = wkv_f4(st[4 * m], st[4 * m + 1], st[4 * m + 2], st[4 * m + 3]);
    return 0;
}
