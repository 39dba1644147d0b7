# Dot product and axpy on short float rows, inline (no BLAS call).
#
# The active-set kernels (forward, input gradient, gradient rows) work on one weight row of a
# few hundred floats per active entry, and a batch at the Amazon-670K shape has ~128,000
# entries per kernel: a BLAS call per row (through scipy's function pointers, plus OpenBLAS's
# argument checks) costs about as much as its arithmetic. These are inlined instead.
#
# x86-64 with AVX2 and FMA (checked at run time: the build stays baseline x86-64) uses 256-bit
# FMA loops; otherwise SSE (x86-64 baseline) or plain C. As with BLAS kernels, the last bits of a
# dot product depend on the path, so on one machine every kernel that must agree bit for bit with
# another (the fused gradient rows of _optim and _active.grad_rows_dense) uses these same
# functions. Summation order within a row is fixed: results do not depend on the thread count.

cdef extern from *:
    """
    #ifndef FF_VEC_DEFINED
    #define FF_VEC_DEFINED
    #include <math.h>
    #if defined(__GNUC__) && defined(__x86_64__)
    #include <immintrin.h>
    #define FF_VEC_AVX2 1
    __attribute__((target("avx2,fma")))
    static float ff_vec_dot_avx2(const float *a, const float *b, Py_ssize_t n) {
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(),
               s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        Py_ssize_t i = 0;
        for (; i + 32 <= n; i += 32) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
        }
        for (; i + 8 <= n; i += 8)
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s0 = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        float s = _mm_cvtss_f32(h);
        for (; i < n; i++)
            s = fmaf(a[i], b[i], s);
        return s;
    }
    __attribute__((target("avx2,fma")))
    static void ff_vec_axpy_avx2(Py_ssize_t n, float alpha, const float *x, float *y) {
        const __m256 va = _mm256_set1_ps(alpha);
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                    _mm256_loadu_ps(y + i)));
            _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + 8),
                                                        _mm256_loadu_ps(y + i + 8)));
        }
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                    _mm256_loadu_ps(y + i)));
        for (; i < n; i++)
            y[i] = fmaf(alpha, x[i], y[i]);
    }
    static int ff_vec_use_avx2(void) {
        static int have = -1;
        if (have < 0)
            have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        return have;
    }
    #endif

    static inline float ff_vec_dot(const float *a, const float *b, Py_ssize_t n) {
    #ifdef FF_VEC_AVX2
        if (ff_vec_use_avx2())
            return ff_vec_dot_avx2(a, b, n);
        __m128 s0 = _mm_setzero_ps(), s1 = _mm_setzero_ps();
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            s0 = _mm_add_ps(s0, _mm_mul_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)));
            s1 = _mm_add_ps(s1, _mm_mul_ps(_mm_loadu_ps(a + i + 4), _mm_loadu_ps(b + i + 4)));
        }
        s0 = _mm_add_ps(s0, s1);
        s0 = _mm_add_ps(s0, _mm_movehl_ps(s0, s0));
        s0 = _mm_add_ss(s0, _mm_shuffle_ps(s0, s0, 1));
        float s = _mm_cvtss_f32(s0);
    #else
        float s = 0.0f;
        Py_ssize_t i = 0;
    #endif
        for (; i < n; i++)
            s += a[i] * b[i];
        return s;
    }

    static inline void ff_vec_axpy(Py_ssize_t n, float alpha, const float *x, float *y) {
        Py_ssize_t i = 0;
    #ifdef FF_VEC_AVX2
        if (ff_vec_use_avx2()) {
            ff_vec_axpy_avx2(n, alpha, x, y);
            return;
        }
    #endif
        for (; i < n; i++)
            y[i] += alpha * x[i];
    }
    #endif
    """
    float ff_vec_dot(const float* a, const float* b, Py_ssize_t n) noexcept nogil
    void ff_vec_axpy(Py_ssize_t n, float alpha, const float* x, float* y) noexcept nogil
