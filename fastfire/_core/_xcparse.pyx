# Streaming reader and writer for the Extreme Classification Repository text format.
#
#     n_samples n_features n_labels
#     l1,l2,... f:v f:v ...          (one line per sample; the label list may be empty)
#
# The Python layer (fastfire.datasets) opens the (possibly compressed) file, reads it in large
# chunks into one bytearray and hands every chunk to XCParser.feed, which parses the complete lines
# in it without the GIL and without any Python object per token. CSR arrays grow by doubling in
# C memory and are handed to NumPy without a copy (_OwnedBuffer). Errors are recorded as a code,
# a line number and a value; the Python layer turns them into a ValueError naming file and line.

from libc.stdlib cimport malloc, realloc, free, strtod, qsort
from libc.string cimport memcpy, memchr
from libc.math cimport isfinite, log10, floor, rint, signbit
from cpython.buffer cimport PyBuffer_FillInfo

from fastfire._core._types cimport float32_t, index_t, offset_t

import numpy as np

cdef enum:
    ERR_NONE = 0
    ERR_MEMORY = 1
    ERR_HEADER = 2
    ERR_LABEL = 3
    ERR_LABEL_RANGE = 4
    ERR_FEATURE = 5
    ERR_FEATURE_RANGE = 6
    ERR_COLON = 7
    ERR_VALUE = 8
    ERR_NONFINITE = 9
    ERR_DUPLICATE = 10
    ERR_TOO_MANY_LINES = 11

cdef long long INDEX_MAX = 2147483647           # largest int32
cdef long long COUNT_MAX = 4611686018427387904  # 2**62, bound on n_samples
cdef unsigned long long MANT_EXACT = 9007199254740992ULL  # 2**53

cdef double[23] POW10
POW10[:] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
            1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]


cdef struct FeatPair:
    index_t idx
    float32_t val


cdef int _cmp_pair(const void* a, const void* b) noexcept nogil:
    cdef index_t ia = (<const FeatPair*>a).idx
    cdef index_t ib = (<const FeatPair*>b).idx
    return (ia > ib) - (ia < ib)


cdef int _cmp_index(const void* a, const void* b) noexcept nogil:
    cdef index_t ia = (<const index_t*>a)[0]
    cdef index_t ib = (<const index_t*>b)[0]
    return (ia > ib) - (ia < ib)


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef int _parse_uint(const unsigned char** pp, const unsigned char* e, long long limit,
                     long long* out) noexcept nogil:
    """Decimal digits at *pp: 0 ok, 1 no digit, 2 above limit (the digits are skipped)."""
    cdef const unsigned char* p = pp[0]
    cdef long long v = 0
    cdef int d
    if p >= e or not _is_digit(p[0]):
        return 1
    while p < e and _is_digit(p[0]):
        d = p[0] - 48
        if v > (limit - d) // 10:
            while p < e and _is_digit(p[0]):
                p += 1
            pp[0] = p
            return 2
        v = v * 10 + d
        p += 1
    pp[0] = p
    out[0] = v
    return 0


cdef const unsigned char* _parse_float(const unsigned char* p, const unsigned char* e,
                                       double* out) noexcept nogil:
    """A decimal float at p (exact fast path, strtod otherwise); NULL when there is none.

    The fast path is exact: at most 19 significant digits, mantissa <= 2**53 and |exponent| <= 22
    make m * 10**e (or m / 10**-e) one correctly rounded double operation.
    """
    cdef const unsigned char* s = p
    cdef bint neg = False
    cdef bint digits = False
    cdef bint slow = False
    cdef unsigned long long m = 0
    cdef int nd = 0
    cdef int ex = 0
    cdef int ev = 0
    cdef int esign = 1
    cdef double v
    cdef char* endp
    if p < e and (p[0] == 45 or p[0] == 43):
        neg = p[0] == 45
        p += 1
    while p < e and _is_digit(p[0]):
        digits = True
        if m != 0 or p[0] != 48:
            if nd >= 19:
                slow = True
                break
            m = m * 10 + (p[0] - 48)
            nd += 1
        p += 1
    if not slow and p < e and p[0] == 46:  # '.'
        p += 1
        while p < e and _is_digit(p[0]):
            digits = True
            if m != 0 or p[0] != 48:
                if nd >= 19:
                    slow = True
                    break
                m = m * 10 + (p[0] - 48)
                nd += 1
            ex -= 1
            p += 1
    if not slow and digits and p < e and (p[0] == 101 or p[0] == 69):  # 'e' 'E'
        p += 1
        if p < e and (p[0] == 45 or p[0] == 43):
            esign = -1 if p[0] == 45 else 1
            p += 1
        if p >= e or not _is_digit(p[0]):
            slow = True
        while p < e and _is_digit(p[0]):
            if ev < 100000:
                ev = ev * 10 + (p[0] - 48)
            p += 1
        ex += esign * ev
    if not slow and digits:
        if m == 0:
            out[0] = -0.0 if neg else 0.0
            return p
        if m <= MANT_EXACT and -22 <= ex <= 22:
            v = <double>m
            if ex >= 0:
                v = v * POW10[ex]
            else:
                v = v / POW10[-ex]
            out[0] = -v if neg else v
            return p
    # slow path: the token is followed by whitespace or '\n' in the buffer, where strtod stops
    v = strtod(<const char*>s, &endp)
    if <const unsigned char*>endp == s:
        return NULL
    out[0] = v
    return <const unsigned char*>endp


cdef class _OwnedBuffer:
    """A malloc'ed block exported through the buffer protocol and freed with the last user."""
    cdef void* ptr
    cdef Py_ssize_t nbytes

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr, self.nbytes, 0, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        free(self.ptr)


cdef struct GrowBuf:
    char* data
    Py_ssize_t size      # items in use
    Py_ssize_t cap       # items allocated
    Py_ssize_t itemsize


cdef int _reserve(GrowBuf* b, Py_ssize_t need) noexcept nogil:
    """Make room for `need` items (capacity doubles); 0 ok, -1 out of memory."""
    cdef Py_ssize_t cap = b.cap
    cdef char* data
    if need <= cap:
        return 0
    if cap < 1024:
        cap = 1024
    while cap < need:
        cap *= 2
    data = <char*>realloc(b.data, cap * b.itemsize)
    if data == NULL:
        return -1
    b.data = data
    b.cap = cap
    return 0


cdef object _to_numpy(GrowBuf* b, dtype):
    """Hand the buffer to NumPy (shrunk to size, no copy); the GrowBuf is emptied."""
    cdef _OwnedBuffer owner = _OwnedBuffer.__new__(_OwnedBuffer)
    cdef Py_ssize_t n = b.size if b.size > 0 else 1
    cdef char* data = <char*>realloc(b.data, n * b.itemsize)
    if data == NULL:
        data = b.data
    owner.ptr = data
    owner.nbytes = b.size * b.itemsize
    b.data = NULL
    b.size = 0
    b.cap = 0
    return np.frombuffer(owner, dtype=dtype)


cdef class XCParser:
    """Incremental parser state: feed it chunks of complete lines, then call finish()."""
    cdef GrowBuf x_indptr, x_indices, x_data, y_indptr, y_indices
    cdef FeatPair* scratch
    cdef Py_ssize_t scratch_cap
    cdef readonly long long n_samples, n_features, n_labels, line_no, n_rows
    cdef readonly bint header_done
    cdef readonly int err_code
    cdef readonly long long err_line, err_value
    cdef readonly Py_ssize_t err_col

    def __cinit__(self):
        self.x_indptr.itemsize = sizeof(offset_t)
        self.y_indptr.itemsize = sizeof(offset_t)
        self.x_indices.itemsize = sizeof(index_t)
        self.y_indices.itemsize = sizeof(index_t)
        self.x_data.itemsize = sizeof(float32_t)
        self.err_value = -1

    def __dealloc__(self):
        free(self.x_indptr.data)
        free(self.y_indptr.data)
        free(self.x_indices.data)
        free(self.y_indices.data)
        free(self.x_data.data)
        free(self.scratch)

    cdef int _fail(self, int code, long long value, Py_ssize_t col) noexcept nogil:
        self.err_code = code
        self.err_line = self.line_no
        self.err_value = value
        self.err_col = col
        return -1

    cdef int _parse_header(self, const unsigned char* p, const unsigned char* e) noexcept nogil:
        cdef long long v[3]
        cdef int i
        cdef long long[3] limits
        limits[0] = COUNT_MAX
        limits[1] = INDEX_MAX
        limits[2] = INDEX_MAX
        for i in range(3):
            while p < e and _is_ws(p[0]):
                p += 1
            if _parse_uint(&p, e, limits[i], &v[i]) != 0:
                return self._fail(ERR_HEADER, -1, 0)
            if p < e and not _is_ws(p[0]):
                return self._fail(ERR_HEADER, -1, 0)
        while p < e and _is_ws(p[0]):
            p += 1
        if p != e:
            return self._fail(ERR_HEADER, -1, 0)
        self.n_samples = v[0]
        self.n_features = v[1]
        self.n_labels = v[2]
        self.header_done = True
        if _reserve(&self.x_indptr, 1) or _reserve(&self.y_indptr, 1):
            return self._fail(ERR_MEMORY, -1, 0)
        (<offset_t*>self.x_indptr.data)[0] = 0
        (<offset_t*>self.y_indptr.data)[0] = 0
        self.x_indptr.size = 1
        self.y_indptr.size = 1
        return 0

    cdef int _finish_row(self, Py_ssize_t x0, Py_ssize_t y0) noexcept nogil:
        """Sort the row's features and labels, reject duplicate features, drop duplicate labels."""
        cdef Py_ssize_t i, j, n
        cdef index_t* xi = <index_t*>self.x_indices.data
        cdef float32_t* xv = <float32_t*>self.x_data.data
        cdef index_t* yi = <index_t*>self.y_indices.data
        cdef bint ordered = True
        cdef FeatPair* tmp
        n = self.x_indices.size
        for i in range(x0 + 1, n):
            if xi[i] <= xi[i - 1]:
                ordered = False
                break
        if not ordered:
            if n - x0 > self.scratch_cap:
                tmp = <FeatPair*>realloc(self.scratch, (n - x0) * sizeof(FeatPair))
                if tmp == NULL:
                    return self._fail(ERR_MEMORY, -1, 0)
                self.scratch = tmp
                self.scratch_cap = n - x0
            for i in range(x0, n):
                self.scratch[i - x0].idx = xi[i]
                self.scratch[i - x0].val = xv[i]
            qsort(self.scratch, n - x0, sizeof(FeatPair), _cmp_pair)
            for i in range(x0, n):
                xi[i] = self.scratch[i - x0].idx
                xv[i] = self.scratch[i - x0].val
            for i in range(x0 + 1, n):
                if xi[i] == xi[i - 1]:
                    return self._fail(ERR_DUPLICATE, xi[i], 0)
        n = self.y_indices.size
        ordered = True
        for i in range(y0 + 1, n):
            if yi[i] <= yi[i - 1]:
                ordered = False
                break
        if not ordered:
            qsort(yi + y0, n - y0, sizeof(index_t), _cmp_index)
            j = y0 + 1
            for i in range(y0 + 1, n):
                if yi[i] != yi[j - 1]:
                    yi[j] = yi[i]
                    j += 1
            self.y_indices.size = j
        if _reserve(&self.x_indptr, self.x_indptr.size + 1) or \
                _reserve(&self.y_indptr, self.y_indptr.size + 1):
            return self._fail(ERR_MEMORY, -1, 0)
        (<offset_t*>self.x_indptr.data)[self.x_indptr.size] = self.x_indices.size
        (<offset_t*>self.y_indptr.data)[self.y_indptr.size] = self.y_indices.size
        self.x_indptr.size += 1
        self.y_indptr.size += 1
        self.n_rows += 1
        return 0

    cdef int _parse_line(self, const unsigned char* line, const unsigned char* e) noexcept nogil:
        cdef const unsigned char* p = line
        cdef const unsigned char* q
        cdef const unsigned char* tok_end
        cdef bint has_colon = False
        cdef long long v
        cdef int r
        cdef double d
        cdef float32_t f
        cdef Py_ssize_t x0, y0
        while e > p and _is_ws((e - 1)[0]):
            e -= 1
        if not self.header_done:
            return self._parse_header(p, e)
        if self.n_rows >= self.n_samples:
            while p < e and _is_ws(p[0]):
                p += 1
            if p == e:
                return 0  # blank lines after the last sample are allowed
            return self._fail(ERR_TOO_MANY_LINES, self.n_samples, 0)
        x0 = self.x_indices.size
        y0 = self.y_indices.size
        # label list: the first token when it has no ':' (absent when the line starts with a blank)
        if p < e and not _is_ws(p[0]):
            tok_end = p
            while tok_end < e and not _is_ws(tok_end[0]):
                if tok_end[0] == 58:  # ':'
                    has_colon = True
                    break
                tok_end += 1
            if not has_colon:
                while True:
                    r = _parse_uint(&p, tok_end, INDEX_MAX, &v)
                    if r == 1:
                        return self._fail(ERR_LABEL, -1, p - line)
                    if r == 2 or v >= self.n_labels:
                        return self._fail(ERR_LABEL_RANGE, v if r == 0 else -1, p - line)
                    if _reserve(&self.y_indices, self.y_indices.size + 1):
                        return self._fail(ERR_MEMORY, -1, 0)
                    (<index_t*>self.y_indices.data)[self.y_indices.size] = <index_t>v
                    self.y_indices.size += 1
                    if p == tok_end:
                        break
                    if p[0] != 44:  # ','
                        return self._fail(ERR_LABEL, -1, p - line)
                    p += 1
        # features
        while True:
            while p < e and _is_ws(p[0]):
                p += 1
            if p >= e:
                break
            r = _parse_uint(&p, e, INDEX_MAX, &v)
            if r == 1:
                return self._fail(ERR_FEATURE, -1, p - line)
            if r == 2 or v >= self.n_features:
                return self._fail(ERR_FEATURE_RANGE, v if r == 0 else -1, p - line)
            if p >= e or p[0] != 58:
                return self._fail(ERR_COLON, v, p - line)
            p += 1
            if p >= e or _is_ws(p[0]):
                return self._fail(ERR_VALUE, v, p - line)
            q = _parse_float(p, e, &d)
            if q == NULL or (q < e and not _is_ws(q[0])):
                return self._fail(ERR_VALUE, v, p - line)
            f = <float32_t>d
            if not isfinite(f):
                return self._fail(ERR_NONFINITE, v, p - line)
            if _reserve(&self.x_indices, self.x_indices.size + 1) or \
                    _reserve(&self.x_data, self.x_data.size + 1):
                return self._fail(ERR_MEMORY, -1, 0)
            (<index_t*>self.x_indices.data)[self.x_indices.size] = <index_t>v
            (<float32_t*>self.x_data.data)[self.x_data.size] = f
            self.x_indices.size += 1
            self.x_data.size += 1
            p = q
        return self._finish_row(x0, y0)

    def feed(self, const unsigned char[::1] buf, Py_ssize_t n):
        """Parse the complete lines of buf[:n]; return the bytes consumed, or -1 on an error."""
        cdef const unsigned char* start
        cdef const unsigned char* p
        cdef const unsigned char* end
        cdef const unsigned char* nl
        cdef int rc = 0
        if n <= 0:
            return 0
        if n > buf.shape[0]:
            raise ValueError("n is larger than the buffer")
        start = &buf[0]
        p = start
        end = start + n
        with nogil:
            while p < end:
                nl = <const unsigned char*>memchr(p, 10, end - p)
                if nl == NULL:
                    break
                self.line_no += 1
                rc = self._parse_line(p, nl)
                if rc != 0:
                    break
                p = nl + 1
        if rc != 0:
            return -1
        return p - start

    def error_message(self):
        """(line number, what is wrong) for the last error."""
        code = self.err_code
        v = self.err_value
        col = self.err_col + 1
        if code == ERR_MEMORY:
            msg = "out of memory while growing the arrays"
        elif code == ERR_HEADER:
            msg = ("bad header: expected three non-negative integers "
                   "'n_samples n_features n_labels' (n_features, n_labels < 2**31)")
        elif code == ERR_LABEL:
            msg = f"column {col}: label is not a non-negative integer (labels are 'l1,l2,...')"
        elif code == ERR_LABEL_RANGE:
            what = str(v) if v >= 0 else "a huge value"
            msg = f"column {col}: label {what} is out of range: the header says n_labels={self.n_labels}"
        elif code == ERR_FEATURE:
            msg = f"column {col}: feature index is not a non-negative integer (features are 'f:v')"
        elif code == ERR_FEATURE_RANGE:
            what = str(v) if v >= 0 else "a huge value"
            msg = (f"column {col}: feature index {what} is out of range: "
                   f"the header says n_features={self.n_features}")
        elif code == ERR_COLON:
            msg = f"column {col}: missing ':' after feature index {v} (features are 'f:v')"
        elif code == ERR_VALUE:
            msg = f"column {col}: feature {v} has a missing or malformed value"
        elif code == ERR_NONFINITE:
            msg = f"column {col}: feature {v} has a NaN or infinite value (or one beyond float32)"
        elif code == ERR_DUPLICATE:
            msg = f"feature index {v} appears twice in the line"
        elif code == ERR_TOO_MANY_LINES:
            msg = f"more lines than the header says (n_samples={self.n_samples})"
        else:
            msg = "unknown error"
        return self.err_line, msg

    def finish(self):
        """Check the sample count and return (x_indptr, x_indices, x_data, y_indptr, y_indices).

        Raises ValueError (without the file name) when the header is missing or the file holds
        fewer samples than the header says; the message starts with the line number.
        """
        if not self.header_done:
            raise ValueError("line 1: empty file: missing header 'n_samples n_features n_labels'")
        if self.n_rows < self.n_samples:
            raise ValueError(
                f"line {self.line_no + 1}: fewer lines than the header says: found "
                f"{self.n_rows} samples, the header promises n_samples={self.n_samples}"
            )
        return (
            _to_numpy(&self.x_indptr, np.int64),
            _to_numpy(&self.x_indices, np.int32),
            _to_numpy(&self.x_data, np.float32),
            _to_numpy(&self.y_indptr, np.int64),
            _to_numpy(&self.y_indices, np.int32),
        )


cdef inline char* _write_uint(char* out, unsigned long long v) noexcept nogil:
    cdef char tmp[24]
    cdef int n = 0
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n > 0:
        n -= 1
        out[0] = tmp[n]
        out += 1
    return out


# 10**k for k in [-60, 60], each correctly rounded (float() of the decimal literal).
cdef double[121] POW10_WIDE
for _k in range(-60, 61):
    POW10_WIDE[_k + 60] = float(f"1e{_k}")


cdef inline char* _write_float(char* o, float32_t value) noexcept nogil:
    """Write a finite float32 with 9 significant digits (trailing zeros dropped), '%.9g' style.

    The 9-digit mantissa m = rint(|v| * 10**(8 - e)) can differ from printf's correctly rounded
    one by one unit in the last digit (the scaling is off by an ulp of a double); one unit is at
    most 1e-8 relative, below half a float32 ulp (2**-25 > 2.9e-8 relative), so reading the text
    back still gives the same float32. At most 16 bytes.
    """
    cdef double d = value
    cdef long long m
    cdef int e, i, nd, pos
    cdef char digits[9]
    if d == 0.0:
        if signbit(d):
            o[0] = 45
            o += 1
        o[0] = 48
        return o + 1
    if d < 0:
        o[0] = 45
        o += 1
        d = -d
    e = <int>floor(log10(d))
    m = <long long>rint(d * POW10_WIDE[8 - e + 60])
    if m >= 1000000000:
        e += 1
        m = <long long>rint(d * POW10_WIDE[8 - e + 60])
    elif m < 100000000:
        e -= 1
        m = <long long>rint(d * POW10_WIDE[8 - e + 60])
        if m >= 1000000000:  # 99999999.6 rounded up: back to the larger exponent
            e += 1
            m = 100000000
    for i in range(8, -1, -1):
        digits[i] = <char>(48 + m % 10)
        m //= 10
    nd = 9
    while nd > 1 and digits[nd - 1] == 48:
        nd -= 1
    if e < -4 or e >= 9:
        o[0] = digits[0]
        o += 1
        if nd > 1:
            o[0] = 46
            o += 1
            for i in range(1, nd):
                o[0] = digits[i]
                o += 1
        o[0] = 101
        o += 1
        if e < 0:
            o[0] = 45
            e = -e
        else:
            o[0] = 43
        o += 1
        if e < 10:
            o[0] = 48
            o += 1
        return _write_uint(o, <unsigned long long>e)
    if e < 0:
        o[0] = 48
        o[1] = 46
        o += 2
        for i in range(-e - 1):
            o[0] = 48
            o += 1
        for i in range(nd):
            o[0] = digits[i]
            o += 1
        return o
    for i in range(e + 1):
        o[0] = digits[i] if i < nd else 48
        o += 1
    if nd > e + 1:
        o[0] = 46
        o += 1
        for pos in range(e + 1, nd):
            o[0] = digits[pos]
            o += 1
    return o


def format_floats(const float32_t[::1] values):
    """Each value as written by format_rows (a list of str): for tests."""
    cdef char buf[32]
    cdef char* end
    out = []
    for i in range(values.shape[0]):
        end = _write_float(buf, values[i])
        out.append(buf[:end - buf].decode())
    return out


# Bytes that one row can take at most when written: see format_rows.
FEATURE_BYTES = 32
LABEL_BYTES = 12
ROW_BYTES = 2


def format_rows(const offset_t[::1] x_indptr,    # IN (n_samples + 1)
                const index_t[::1] x_indices,    # IN sorted within rows
                const float32_t[::1] x_data,     # IN finite
                const offset_t[::1] y_indptr,    # IN (n_samples + 1)
                const index_t[::1] y_indices,    # IN
                Py_ssize_t row_start, Py_ssize_t row_stop,
                unsigned char[::1] out):         # OUT at least the bound below
    """Write rows [row_start, row_stop) as XC text into `out`; return the bytes written.

    `out` must hold FEATURE_BYTES per feature + LABEL_BYTES per label + ROW_BYTES per row. A row
    with no label starts with a space; floats are written with 9 significant digits like '%.9g'
    (exact for float32, see _write_float).
    """
    cdef Py_ssize_t r, j
    cdef char* base
    cdef char* o
    cdef offset_t a, b
    if row_stop <= row_start:
        return 0
    base = <char*>&out[0]
    o = base
    with nogil:
        for r in range(row_start, row_stop):
            a = y_indptr[r]
            b = y_indptr[r + 1]
            for j in range(a, b):
                if j > a:
                    o[0] = 44
                    o += 1
                o = _write_uint(o, <unsigned long long>y_indices[j])
            for j in range(x_indptr[r], x_indptr[r + 1]):
                o[0] = 32
                o += 1
                o = _write_uint(o, <unsigned long long>x_indices[j])
                o[0] = 58
                o += 1
                o = _write_float(o, x_data[j])
            o[0] = 10
            o += 1
    return o - base
