/* The bare loops behind the LSH throughput targets: no hashing, no hidden layer, no Python,
 * no checks. bench/ceiling.py compiles this file (gcc -O3 -march=native -ffast-math -fopenmp;
 * fast-math lets the dot products vectorize) into a temporary folder and times it on the same
 * problem shape as fastfire's LSH output layer.
 *
 * bare_sgd:  the "bare C loop over 1,000 random 128-float rows per sample": for every
 *            entry a dot product with the sample's hidden vector, then a plain SGD axpy into
 *            the same row (HOGWILD, parallel over the samples of a batch).
 * bare_adam: the same forward, then lazy Adam over the rows the batch touched, each row's
 *            gradient summed from its entries inside the row pass (parallel over rows). The
 *            entries are grouped by row before the clock starts, so this is a lower bound on
 *            the work of fastfire's forward by rows plus its fused Adam pass.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float dot(const float *restrict a, const float *restrict b, int d)
{
    float s = 0.0f;
    for (int k = 0; k < d; k++)
        s += a[k] * b[k];
    return s;
}

/* W (n_rows, d); H (n, d) hidden vectors; ids (n, a) active rows of each sample. */
void bare_sgd(float *W, const float *H, const int32_t *ids, int64_t n, int d, int a,
              int batch, float lr, int n_threads)
{
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
        int64_t b1 = b0 + batch < n ? b0 + batch : n;
#pragma omp parallel for num_threads(n_threads) schedule(static)
        for (int64_t i = b0; i < b1; i++) {
            const float *h = H + i * d;
            const int32_t *id = ids + i * a;
            for (int j = 0; j < a; j++) {
                float *w = W + (int64_t)id[j] * d;
                float z = dot(w, h, d);
                float g = lr * (1.0f / (1.0f + expf(-z)) - (j == 0 ? 1.0f : 0.0f));
                for (int k = 0; k < d; k++)
                    w[k] -= g * h[k];
            }
        }
    }
}

/* As bare_sgd's shapes, plus the Adam moments M, V (n_rows, d), the entries grouped by row for
 * every batch (row_ptr: n_batches * (n_rows + 1) offsets into row_entries, which hold positions
 * i * a + j), and scratch delta (n * a). */
void bare_adam(float *W, float *M, float *V, const float *H, const int32_t *ids, int64_t n,
               int d, int a, int n_rows, int batch, const int64_t *row_ptr,
               const int64_t *row_entries, float *delta, float lr, int n_threads)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    int64_t t = 0;
    for (int64_t s0 = 0; s0 < n; s0 += batch, t++) {
        int64_t s1 = s0 + batch < n ? s0 + batch : n;
        const int64_t *ptr = row_ptr + t * (int64_t)(n_rows + 1);
        float step = lr * sqrtf(1.0f - powf(b2, (float)(t + 1)))
                     / (1.0f - powf(b1, (float)(t + 1)));
#pragma omp parallel num_threads(n_threads)
        {
#pragma omp for schedule(static)
            for (int64_t i = s0; i < s1; i++) {
                const float *h = H + i * d;
                for (int j = 0; j < a; j++) {
                    float z = dot(W + (int64_t)ids[i * a + j] * d, h, d);
                    delta[i * a + j] = 1.0f / (1.0f + expf(-z)) - (j == 0 ? 1.0f : 0.0f);
                }
            }
            float *g = malloc(sizeof(float) * (size_t)d);
#pragma omp for schedule(static, 64)
            for (int r = 0; r < n_rows; r++) {
                if (ptr[r] == ptr[r + 1])
                    continue;
                for (int k = 0; k < d; k++)
                    g[k] = 0.0f;
                for (int64_t q = ptr[r]; q < ptr[r + 1]; q++) {
                    int64_t e = row_entries[q];
                    const float *h = H + (e / a) * d;
                    float de = delta[e];
                    for (int k = 0; k < d; k++)
                        g[k] += de * h[k];
                }
                float *w = W + (int64_t)r * d, *m = M + (int64_t)r * d, *v = V + (int64_t)r * d;
                for (int k = 0; k < d; k++) {
                    m[k] = b1 * m[k] + (1.0f - b1) * g[k];
                    v[k] = b2 * v[k] + (1.0f - b2) * g[k] * g[k];
                    w[k] -= step * m[k] / (sqrtf(v[k]) + eps);
                }
            }
            free(g);
        }
    }
}
