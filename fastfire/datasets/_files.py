"""File access shared by the readers: transparent decompression and canonical CSR."""

import bz2
import gzip
import io
import lzma
import zlib

import numpy as np
import scipy.sparse as sp

_CHUNK = 16 << 20  # bytes read at a time by the streaming readers
_SYSTEM_DATA = "/usr/share/datasets"


# ---------------------------------------------------------------------------------------------
# files


def _open_binary(path):
    """Open `path` for binary reading, decompressing gzip, bzip2 or xz by magic bytes."""
    raw = open(path, "rb", buffering=0)
    try:
        magic = raw.read(6)
        raw.seek(0)
    except BaseException:
        raw.close()
        raise
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=io.BufferedReader(raw, _CHUNK), mode="rb"), raw
    if magic[:3] == b"BZh":
        return bz2.BZ2File(io.BufferedReader(raw, _CHUNK), mode="rb"), raw
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(io.BufferedReader(raw, _CHUNK), mode="rb"), raw
    return raw, raw


_DECOMPRESS_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error)


def _csr(data, indices, indptr, shape):
    """CSR float32 from canonical arrays: int32 indices when they fit, sorted indices flagged."""
    if indptr.size and indptr[-1] <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32, copy=False)
    X = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    X.has_sorted_indices = True
    return X
