/* Scores of a tile of database rows against a block of queries, for the exact kernel (kernels/scores.py).
 *
 *     out[r, j] = sum_k db[r, k] * qt[k, j]      r < rows, j < width, k < dim
 *
 * db is row-major (rows x dim, rows ldd floats apart), qt the queries transposed and zero-padded to a width
 * that is a multiple of 16 (dim x width), out row-major (rows x width). AVX-512F only: the caller checks the
 * CPU. Why not BLAS's sgemm: at 64 queries a database tile is used 64 times, and sgemm first copies ("packs")
 * every tile it is given, reading it from memory with nothing to overlap; here each database value is
 * broadcast straight from its row while the next rows are prefetched, and the queries stay in L1/L2. On the
 * 2-core AMD EPYC this streams at ~0.93 of a square sgemm's rate against ~0.75 for sgemm itself
 * (bench/exact.py). No validation here: kernels/scores.py checks shapes, types and contiguity. */
#include <immintrin.h>
#include <stddef.h>

#define ROWS 6 /* 6 rows x 4 vectors = 24 accumulators, 4 query vectors and a broadcast: 29 of 32 zmm */
#define PREFETCH_EVERY 16 /* floats: one cache line of each row per 16 steps */

/* ROWS rows (the last ones may repeat row 0 when fewer are left; their results are not stored) by NV*16
 * queries. */
#define DEFINE_BLOCK(NV)                                                                                   \
    static void block_##NV(const float *const *row, const float *next, size_t ldd, const float *qt,        \
                           size_t width, size_t dim, float *out, size_t ldo, int nrows) {                 \
        __m512 acc[ROWS][NV];                                                                              \
        _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++)                                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();          \
        for (size_t k = 0; k < dim; k++) {                                                                 \
            const float *q = qt + k * width;                                                               \
            __m512 qv[NV];                                                                                 \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) qv[v] = _mm512_loadu_ps(q + 16 * v);      \
            if (next != NULL && k % PREFETCH_EVERY == 0) {                                                 \
                _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++)                                     \
                    _mm_prefetch((const char *)(next + i * ldd + k), _MM_HINT_T0);                         \
            }                                                                                              \
            _Pragma("GCC unroll 8") for (int i = 0; i < ROWS; i++) {                                       \
                __m512 b = _mm512_set1_ps(row[i][k]);                                                      \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                       \
                    acc[i][v] = _mm512_fmadd_ps(b, qv[v], acc[i][v]);                                      \
            }                                                                                              \
        }                                                                                                  \
        for (int i = 0; i < nrows; i++)                                                                    \
            for (int v = 0; v < NV; v++) _mm512_storeu_ps(out + i * ldo + 16 * v, acc[i][v]);              \
    }

DEFINE_BLOCK(1)
DEFINE_BLOCK(2)
DEFINE_BLOCK(3)
DEFINE_BLOCK(4)

void vs_scores_tile(const float *db, size_t rows, size_t ldd, size_t dim, const float *qt, size_t width,
                    float *out) {
    for (size_t r0 = 0; r0 < rows; r0 += ROWS) {
        int nrows = rows - r0 < ROWS ? (int)(rows - r0) : ROWS;
        const float *row[ROWS];
        for (int i = 0; i < ROWS; i++) row[i] = db + (r0 + (i < nrows ? i : 0)) * ldd;
        /* The next block's rows, fetched while this one computes; none past the tile. */
        const float *next = r0 + 2 * ROWS <= rows ? db + (r0 + ROWS) * ldd : NULL;
        for (size_t j0 = 0; j0 < width; j0 += 64) {
            size_t nv = (width - j0) / 16 < 4 ? (width - j0) / 16 : 4;
            const float *q = qt + j0;
            float *o = out + r0 * width + j0;
            const float *pf = j0 == 0 ? next : NULL;
            switch (nv) {
            case 1: block_1(row, pf, ldd, q, width, dim, o, width, nrows); break;
            case 2: block_2(row, pf, ldd, q, width, dim, o, width, nrows); break;
            case 3: block_3(row, pf, ldd, q, width, dim, o, width, nrows); break;
            default: block_4(row, pf, ldd, q, width, dim, o, width, nrows); break;
            }
        }
    }
}
