# Shared C types of the kernels. Data are float32; long sums accumulate in float64.
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

ctypedef float float32_t
ctypedef double float64_t
ctypedef int32_t index_t      # neuron, feature and label ids
ctypedef int64_t offset_t     # CSR offsets (may exceed 2**31 on XC data)
