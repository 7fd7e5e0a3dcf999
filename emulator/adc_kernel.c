/* The emulator's ADC chain with its fast read noise as one loop over the outputs (chain "native").

   Built by emulator/native.py with the machine's C compiler and called through ctypes; the same
   formulas as emulator/periphery.py:adc_reference (see there for units and sources), in float32:

     q      = d + z sqrt(var)                 z ~ N(0, 1), the recurrent fast read noise
     4-phase: counts = cco(s + q) - cco(s - q) (charge window 4 w, count window 2 w)
     1-phase: counts = sign(q) cco(|q|)         (windows w)
     cco(c) = clip(floor(gk c' / (1 + bk c') + ot), 0, top),  c' = clip(c, 0, clip_hi)

   with gk = gain k t, ot = offset t per (core, column) precomputed by the caller.

   The normals come from a counter-based generator, Philox4x32-10 ([PHILOX11]: Salmon, Moraes,
   Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC11), with the Box-Muller transform: output
   (row r, column c) always draws from counter (r * ceil(C / 4) + c / 4, nonce), so the result is
   the same however the rows are split over threads. log, sin and cos are our own short series
   (relative error below 1e-6) so that the loops vectorise without a vector math library.

   Inputs d, s, var are float32 or bfloat16 (the matmul dtype), each row of C values contiguous; row
   r = core * B + b starts at base + core * stride_core + b * stride_batch (in elements). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLS 4096

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* ln(u) for u in (0, 1]: u = 2^e m with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(f / (2 + f)),
   f = m - 1, by its series to the s^9 term (|s| <= 0.1716, truncation below 1e-9). */
static inline float ln_unit(float u) {
    uint32_t b = as_uint(u);
    int32_t e = (int32_t)((b >> 23) & 0xff) - 127;
    float m = as_float((b & 0x7fffffu) | 0x3f800000u);
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e += big;
    float f = m - 1.0f;
    float s = f / (2.0f + f);
    float s2 = s * s;
    float p = 1.0f + s2 * (1.0f / 3.0f + s2 * (1.0f / 5.0f + s2 * (1.0f / 7.0f + s2 * (1.0f / 9.0f))));
    return (float)e * 0.693147180559945f + 2.0f * s * p;
}

/* cos and sin of 2 pi v for v in [0, 1): v = (q + t) / 4 with q the nearest quarter turn and
   |t| <= 1/2, phi = t pi / 2 in [-pi/4, pi/4], Taylor series to phi^10 / phi^9 (error below 2e-9). */
static inline void cos_sin_turn(float v, float *co, float *si) {
    float w = 4.0f * v;
    float qf = (float)(int32_t)(w + 0.5f);
    int32_t q = (int32_t)qf & 3;
    float x = (w - qf) * 1.5707963267948966f;
    float x2 = x * x;
    float c = 1.0f + x2 * (-0.5f + x2 * (1.0f / 24.0f + x2 * (-1.0f / 720.0f + x2 * (1.0f / 40320.0f + x2 * (-1.0f / 3628800.0f)))));
    float s = x * (1.0f + x2 * (-1.0f / 6.0f + x2 * (1.0f / 120.0f + x2 * (-1.0f / 5040.0f + x2 * (1.0f / 362880.0f)))));
    /* rotate by q quarter turns: (c, s) -> (-s, c) -> (-c, -s) -> (s, -c) */
    float cq = (q == 0) ? c : (q == 1) ? -s : (q == 2) ? -c : s;
    float sq = (q == 0) ? s : (q == 1) ? c : (q == 2) ? -s : -c;
    *co = cq;
    *si = sq;
}

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Philox4x32-10: the 4 words of counter x under key (k0, k1), in place. */
static inline void philox4x32_10(uint32_t *x0, uint32_t *x1, uint32_t *x2, uint32_t *x3, uint32_t k0, uint32_t k1) {
    uint32_t a = k0, b = k1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * *x0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * *x2;
        uint32_t y0 = (uint32_t)(p1 >> 32) ^ *x1 ^ a;
        uint32_t y1 = (uint32_t)p1;
        uint32_t y2 = (uint32_t)(p0 >> 32) ^ *x3 ^ b;
        uint32_t y3 = (uint32_t)p0;
        *x0 = y0; *x1 = y1; *x2 = y2; *x3 = y3;
        a += PHILOX_W0;
        b += PHILOX_W1;
    }
}

/* The generator's raw words for a known-answer test: counter c[0..3], key k[0..1] -> out[0..3]. */
void hil_philox4x32_10(const uint32_t *c, const uint32_t *k, uint32_t *out) {
    uint32_t x0 = c[0], x1 = c[1], x2 = c[2], x3 = c[3];
    philox4x32_10(&x0, &x1, &x2, &x3, k[0], k[1]);
    out[0] = x0; out[1] = x1; out[2] = x2; out[3] = x3;
}

/* Fill z[0 .. 4 n4) with N(0, 1) samples from counters (c0 + j, c1, n0, n1), j < n4, key (k0, k1). */
static void philox_normals(float *restrict z, int64_t n4, uint64_t first, uint32_t n0, uint32_t n1,
                           uint32_t k0, uint32_t k1) {
    uint32_t r[MAX_COLS]; /* n4 <= MAX_COLS / 4 */
    for (int64_t j = 0; j < n4; j++) {
        uint64_t ctr = first + (uint64_t)j;
        uint32_t x0 = (uint32_t)ctr, x1 = (uint32_t)(ctr >> 32), x2 = n0, x3 = n1;
        philox4x32_10(&x0, &x1, &x2, &x3, k0, k1);
        r[4 * j] = x0; r[4 * j + 1] = x1; r[4 * j + 2] = x2; r[4 * j + 3] = x3;
    }
    /* Box-Muller on pairs: u1 in (0, 1] (24 bits, never 0), u2 in [0, 1) */
    for (int64_t i = 0; i < 2 * n4; i++) {
        float u1 = (float)((r[2 * i] >> 8) + 1u) * (1.0f / 16777216.0f);
        float u2 = (float)(r[2 * i + 1] >> 8) * (1.0f / 16777216.0f);
        float rad = __builtin_sqrtf(-2.0f * ln_unit(u1));
        float co, si;
        cos_sin_turn(u2, &co, &si);
        z[2 * i] = rad * co;
        z[2 * i + 1] = rad * si;
    }
}

static inline float cco(float c, float clip_hi, float bk, float gk, float ot, float top) {
    c = c < 0.0f ? 0.0f : c;
    c = c > clip_hi ? clip_hi : c;
    float f = c * gk;
    f = bk > 0.0f ? f / (c * bk + 1.0f) : f;
    f = __builtin_floorf(f + ot);
    f = f < 0.0f ? 0.0f : f;
    return f > top ? top : f;
}

/* The chain on one row of float32 values (d, s, var, z contiguous). */
static void chain_row(int64_t C, int32_t four_phase, const float *restrict d, const float *restrict s,
                      const float *restrict v, const float *restrict z, const float *restrict g,
                      const float *restrict o, float clip_hi, float bk, float top, int32_t *restrict out) {
    if (four_phase) {
        for (int64_t c = 0; c < C; c++) {
            float q = d[c] + z[c] * __builtin_sqrtf(v[c]);
            float cp = cco(s[c] + q, clip_hi, bk, g[c], o[c], top);
            float cn = cco(s[c] - q, clip_hi, bk, g[c], o[c], top);
            out[c] = (int32_t)(cp - cn);
        }
    } else {
        for (int64_t c = 0; c < C; c++) {
            float q = d[c] + z[c] * __builtin_sqrtf(v[c]);
            float a = cco(q < 0.0f ? -q : q, clip_hi, bk, g[c], o[c], top);
            out[c] = (int32_t)(q > 0.0f ? a : (q < 0.0f ? -a : 0.0f));
        }
    }
}

/* A row of C values of stride cs into float32 (bfloat16: its bits are the top half of a float32). */
static inline void row_f(float *restrict dst, const float *restrict src, int64_t C, int64_t cs) {
    if (cs == 1) { memcpy(dst, src, (size_t)C * 4); return; }
    for (int64_t c = 0; c < C; c++) dst[c] = src[c * cs];
}
static inline void row_b(float *restrict dst, const uint16_t *restrict src, int64_t C, int64_t cs) {
    uint32_t *u = (uint32_t *)dst;
    if (cs == 1) { for (int64_t c = 0; c < C; c++) u[c] = (uint32_t)src[c] << 16; return; }
    for (int64_t c = 0; c < C; c++) u[c] = (uint32_t)src[c * cs] << 16;
}
#ifdef _OPENMP
#define PRAGMA(x) _Pragma(#x)
#define OMP_FOR(n) PRAGMA(omp parallel for schedule(static) num_threads(n) if (n > 1))
#define OMP_PARALLEL(n, work) PRAGMA(omp parallel num_threads(n) if (n > 1 && work > 1))
#define OMP_FOR_INNER PRAGMA(omp for schedule(static))
#else
#define OMP_FOR(n)
#define OMP_PARALLEL(n, work)
#define OMP_FOR_INNER
#endif

/* 1 where built with OpenMP (one call uses `threads` threads), else 0 (the caller splits the rows). */
int hil_adc_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define ROW(dst, src, C, cs) _Generic((src), const float *: row_f, const uint16_t *: row_b)(dst, src, C, cs)

/* Rows row0 .. row1 - 1 of an MVM's counts (int32, contiguous (rows, C)), over `threads` OpenMP
   threads where built with OpenMP (the runtime torch already loaded, so its warm team does the work);
   returns 0, or 1 for a shape the kernel does not take. `noise` (rows, C) float32 replaces the
   generator when not NULL. */
#define DEFINE_CHAIN(NAME, TD, TS, TV)                                                               \
    int NAME(int64_t row0, int64_t row1, int32_t threads, int64_t B, int64_t C, int32_t four_phase, \
             int64_t cs, const TD *d, int64_t d_core, int64_t d_batch, const TS *s, int64_t s_core, \
             int64_t s_batch, const TV *v, int64_t v_core, int64_t v_batch, const float *noise,     \
             const float *gk, const float *ot, float clip_hi, float bk, float top,                  \
             uint64_t key, uint64_t nonce, int32_t *out) {                                          \
        if (C <= 0 || C > MAX_COLS || B <= 0 || cs <= 0 || threads < 1) return 1;                   \
        int64_t n4 = (C + 3) / 4;                                                                   \
        (void)threads;                                                                              \
        OMP_FOR(threads)                                                                            \
        for (int64_t r = row0; r < row1; r++) {                                                     \
            float z[MAX_COLS], dv[MAX_COLS], sv[MAX_COLS], vv[MAX_COLS];                            \
            int64_t k = r / B, b = r % B;                                                           \
            ROW(dv, d + k * d_core + b * d_batch, C, cs);                                           \
            if (four_phase) ROW(sv, s + k * s_core + b * s_batch, C, cs);                           \
            ROW(vv, v + k * v_core + b * v_batch, C, cs);                                           \
            const float *zr;                                                                        \
            if (noise) {                                                                            \
                zr = noise + r * C;                                                                 \
            } else {                                                                                \
                philox_normals(z, n4, (uint64_t)r * (uint64_t)n4, (uint32_t)nonce,                  \
                               (uint32_t)(nonce >> 32), (uint32_t)key, (uint32_t)(key >> 32));      \
                zr = z;                                                                             \
            }                                                                                       \
            chain_row(C, four_phase, dv, sv, vv, zr, gk + k * C, ot + k * C, clip_hi, bk, top,      \
                      out + r * C);                                                                 \
        }                                                                                           \
        return 0;                                                                                   \
    }

/* hil_adc_<d><s><var>: f float32, b bfloat16 */
DEFINE_CHAIN(hil_adc_fff, float, float, float)
DEFINE_CHAIN(hil_adc_ffb, float, float, uint16_t)
DEFINE_CHAIN(hil_adc_bbb, uint16_t, uint16_t, uint16_t)
DEFINE_CHAIN(hil_adc_bbf, uint16_t, uint16_t, float)

/* The generator alone (tests): the normals of counters first .. first + n4 - 1, 4 n4 values into z. */
void hil_philox_normals(float *z, int64_t n4, uint64_t first, uint64_t nonce, uint64_t key) {
    for (int64_t j = 0; j < n4; j += MAX_COLS / 4) {
        int64_t m = n4 - j < MAX_COLS / 4 ? n4 - j : MAX_COLS / 4;
        philox_normals(z + 4 * j, m, first + (uint64_t)j, (uint32_t)nonce, (uint32_t)(nonce >> 32),
                       (uint32_t)key, (uint32_t)(key >> 32));
    }
}

/* ------------------------------------------------------------------ small batches: products too */

/* Widest rows and columns, and largest batch, of the fused small-batch kernel (its buffers). */
#define SMALL_MAX_RC 1024
#define SMALL_MAX_B 8

/* sum_r w[r] x[r] in a fixed order: 16 partial sums, then halved pairwise (vectorises, and the result
   does not depend on the machine's vector width). */
static inline float dot16(const float *restrict w, const float *restrict x, int64_t R) {
    float acc[16] = {0};
    int64_t r = 0;
    for (; r + 16 <= R; r += 16)
        for (int j = 0; j < 16; j++) acc[j] += w[r + j] * x[r + j];
    float tail = 0.0f;
    for (; r < R; r++) tail += w[r] * x[r];
    for (int h = 8; h >= 1; h /= 2)
        for (int j = 0; j < h; j++) acc[j] += acc[j + h];
    return acc[0] + tail;
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_DPBF16 1
/* sum_r w[r] x[r] of bfloat16 rows by the CPU's bf16 dot-product instruction (exact products, float32
   sums of pairs; a fixed order for this CPU), R a multiple of 32 here. */
static inline float dot_bf16(const uint16_t *restrict w, const uint16_t *restrict x, int64_t R) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t r = 0; r < R; r += 32)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w + r), (__m512bh)_mm512_loadu_si512(x + r));
    return _mm512_reduce_add_ps(acc);
}
#else
#define HAVE_DPBF16 0
#endif

/* float32 to bfloat16, round to nearest even (the inputs here are whole numbers, x^2 < 2^14). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* An MVM of B <= 8 input vectors per core from the stacked transposed matrices
   w3 (all cores, 3 C, R) = [D | S | Var]^T, float32 or bfloat16: per selected core k (cores[k]) and
   batch b, d = x D (+ a x+ D in 1-phase), s = |x| S, var = x^2 Var accumulated in float32 (not
   rounded to the matmul dtype), then the chain of chain_row with the same noise counters as the
   hil_adc_* kernels (row k B + b); gk, ot of the whole chip (cores, C). x: int8 (n, B, R), row stride 1, core/batch strides x_core/x_batch
   (0 for inputs shared by every core). Returns 0, 1 for a shape it does not take, 2 out of memory. */
#define IS_BF16(T) _Generic((T)0, uint16_t: 1, default: 0)
#define BF16_DOT(T, R) (HAVE_DPBF16 && IS_BF16(T) && (R) % 32 == 0 && (R) <= SMALL_MAX_RC)

/* The products of the small kernel from bfloat16 matrices with the bf16 dot instruction: the inputs
   converted to bf16 once (x, |x| and x+ exactly, x^2 rounded as the matmul path rounds it). `xb`:
   scratch of 4 B R bf16 (the float input buffers are read, not overwritten). */
static void small_products_bf16(int64_t B, int64_t R, int64_t C, int32_t four_phase, float asym,
                                const float *xf, const float *xa, const float *x2, const float *xp,
                                const uint16_t *wk, uint16_t *xb, float *dv, float *sv, float *vv) {
#if HAVE_DPBF16
    uint16_t *bx = xb, *ba = bx + B * R, *b2 = ba + B * R, *bp = b2 + B * R;
    for (int64_t i = 0; i < B * R; i++) {
        bx[i] = f32_to_bf16(xf[i]); ba[i] = f32_to_bf16(xa[i]);
        b2[i] = f32_to_bf16(x2[i]); bp[i] = f32_to_bf16(xp[i]);
    }
    for (int64_t c = 0; c < C; c++) {
        const uint16_t *wd = wk + c * R, *ws = wk + (C + c) * R, *wv = wk + (2 * C + c) * R;
        for (int64_t b = 0; b < B; b++) {
            float dd = dot_bf16(wd, bx + b * R, R);
            if (!four_phase && asym > 0.0f) dd += asym * dot_bf16(wd, bp + b * R, R);
            dv[b * C + c] = dd;
            if (four_phase) sv[b * C + c] = dot_bf16(ws, ba + b * R, R);
            vv[b * C + c] = dot_bf16(wv, b2 + b * R, R);
        }
    }
#else
    (void)B; (void)R; (void)C; (void)four_phase; (void)asym; (void)xf; (void)xa; (void)x2; (void)xp;
    (void)wk; (void)xb; (void)dv; (void)sv; (void)vv;
#endif
}

#define DEFINE_SMALL(NAME, TW)                                                                       \
    int NAME(int64_t n, const int64_t *cores, int64_t B, int64_t R, int64_t C, int32_t four_phase,  \
             float asym, const int8_t *x, int64_t x_core, int64_t x_batch, const TW *w3,            \
             const float *gk, const float *ot, float clip_hi, float bk, float top, uint64_t key,    \
             uint64_t nonce, int32_t threads, int32_t *out) {                                       \
        if (n < 1 || B < 1 || B > SMALL_MAX_B || R < 1 || R > SMALL_MAX_RC || C < 1 || C > SMALL_MAX_RC \
            || threads < 1) return 1;                                                               \
        int64_t n4 = (C + 3) / 4;                                                                   \
        int failed = 0;                                                                             \
        (void)threads;                                                                              \
        OMP_PARALLEL(threads, n)                                                                    \
        {                                                                                           \
            /* per thread: inputs (4 B R), one matrix row, products (3 B C), normals (C) */         \
            float *ws = (float *)malloc(sizeof(float) * (size_t)(6 * B * R + R + 3 * B * C + C + 4)); \
            if (!ws) {                                                                              \
                failed = 1;                                                                         \
            }                                                                                       \
            OMP_FOR_INNER                                                                           \
            for (int64_t k = 0; k < n; k++) {                                                       \
                if (!ws) continue;                                                                  \
                float *xf = ws, *xa = xf + B * R, *x2 = xa + B * R, *xp = x2 + B * R;                \
                float *dv = xp + B * R, *sv = dv + B * C, *vv = sv + B * C, *z = vv + B * C;        \
                float *wf = z + C + 4; /* R floats, or 4 B R bf16 for small_products_bf16 */        \
                for (int64_t b = 0; b < B; b++) {                                                   \
                    const int8_t *xr = x + k * x_core + b * x_batch;                                \
                    for (int64_t r = 0; r < R; r++) {                                               \
                        float f = (float)xr[r];                                                     \
                        xf[b * R + r] = f;                                                          \
                        xa[b * R + r] = f < 0.0f ? -f : f;                                          \
                        x2[b * R + r] = f * f;                                                      \
                        xp[b * R + r] = f > 0.0f ? f : 0.0f;                                        \
                    }                                                                               \
                }                                                                                   \
                const TW *wk = w3 + cores[k] * 3 * C * R;                                           \
                if (BF16_DOT(TW, R)) {                                                              \
                    small_products_bf16(B, R, C, four_phase, asym, xf, xa, x2, xp, (const uint16_t *)wk, \
                                        (uint16_t *)wf, dv, sv, vv);                                \
                } else                                                                              \
                for (int64_t c = 0; c < C; c++) {                                                   \
                    ROW(wf, wk + c * R, R, 1);                                                      \
                    for (int64_t b = 0; b < B; b++) {                                               \
                        float dd = dot16(wf, xf + b * R, R);                                        \
                        if (!four_phase && asym > 0.0f) dd += asym * dot16(wf, xp + b * R, R);      \
                        dv[b * C + c] = dd;                                                         \
                    }                                                                               \
                    if (four_phase) {                                                               \
                        ROW(wf, wk + (C + c) * R, R, 1);                                            \
                        for (int64_t b = 0; b < B; b++) sv[b * C + c] = dot16(wf, xa + b * R, R);   \
                    }                                                                               \
                    ROW(wf, wk + (2 * C + c) * R, R, 1);                                            \
                    for (int64_t b = 0; b < B; b++) vv[b * C + c] = dot16(wf, x2 + b * R, R);       \
                }                                                                                   \
                for (int64_t b = 0; b < B; b++) {                                                   \
                    int64_t row = k * B + b;                                                        \
                    philox_normals(z, n4, (uint64_t)row * (uint64_t)n4, (uint32_t)nonce,            \
                                   (uint32_t)(nonce >> 32), (uint32_t)key, (uint32_t)(key >> 32));  \
                    chain_row(C, four_phase, dv + b * C, sv + b * C, vv + b * C, z, gk + cores[k] * C, \
                              ot + cores[k] * C, clip_hi, bk, top, out + row * C);                  \
                }                                                                                   \
            }                                                                                       \
            free(ws);                                                                               \
        }                                                                                           \
        return failed ? 2 : 0;                                                                      \
    }

DEFINE_SMALL(hil_mvm_small_f, float)
DEFINE_SMALL(hil_mvm_small_b, uint16_t)
