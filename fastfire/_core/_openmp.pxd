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
