# The only place in fastfire that touches omp.h. Without OpenMP the functions are stubbed so that
# every kernel still compiles; prange itself already degrades to a serial loop.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTFIRE_OPENMP_ENABLED 1
    #else
    #define FASTFIRE_OPENMP_ENABLED 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    static inline int omp_get_num_threads(void) { return 1; }
    static inline int omp_get_num_procs(void) { return 1; }
    #endif
    """
    bint FASTFIRE_OPENMP_ENABLED
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    int omp_get_num_procs() noexcept nogil


# Below these amounts of work per thread a parallel region costs more than it saves (and on a
# busy machine every region waits for a descheduled thread), so kernels use fewer threads.
cdef enum:
    MIN_ELEMENTS_PER_THREAD = 16384     # element-wise kernels: activations, losses, optimizers
    MIN_MACS_PER_THREAD = 262144        # multiply-adds: GEMM blocks, sparse products


cdef inline int threads_for(int n_threads, Py_ssize_t work, Py_ssize_t min_work) except -1:
    """Validate ``n_threads`` and lower it so that each thread gets ``min_work`` units of work."""
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}.")
    cdef Py_ssize_t useful = work // min_work
    if useful < n_threads:
        return <int> useful if useful > 1 else 1
    return n_threads
