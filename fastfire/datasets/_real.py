"""The real datasets: IDX files, Fashion-MNIST, Bibtex and Corel5k, found on disk."""

import os
from pathlib import Path

import numpy as np

from fastfire.datasets._arff import load_arff
from fastfire.datasets._files import _DECOMPRESS_ERRORS, _SYSTEM_DATA, _open_binary

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path):
    """Load an IDX file (the MNIST format), plain or gzip-compressed.

    Parameters
    ----------
    path : str or path-like
        The file: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
        0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian
        uint32, then the data in big-endian C order.

    Returns
    -------
    array : ndarray
        The data, native byte order, with the file's shape.

    Raises
    ------
    ValueError
        Bad magic number, unknown dtype code, truncated or over-long file.
    """
    name = os.fspath(path)
    stream, raw = _open_binary(path)
    with raw, stream:
        try:
            data = stream.read()
        except _DECOMPRESS_ERRORS as exc:
            raise ValueError(f"{name}: corrupt or truncated compressed data ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic number {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX dtype code 0x{code:02X}")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ValueError(f"{name}: truncated IDX header ({ndim} dimensions declared)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(data) - head != expected:
        what = "truncated" if len(data) - head < expected else "longer than its header says"
        raise ValueError(f"{name}: IDX file is {what}: shape {shape} needs {expected} data bytes, "
                         f"found {len(data) - head}")
    array = np.frombuffer(data, dtype=dtype, offset=head).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------------------------
# real datasets


def get_data_home(data_home=None):
    """The folder holding fastfire's real datasets.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Returned as is when given.

    Returns
    -------
    path : pathlib.Path or None
        `data_home`, else ``$FASTFIRE_DATA``, else None. Loaders also look in
        ``/usr/share/datasets`` (Debian's ``dataset-*`` packages).
    """
    if data_home is not None:
        return Path(data_home)
    env = os.environ.get("FASTFIRE_DATA")
    return Path(env) if env else None


def _find(dataset, filenames, data_home, how_to_get):
    """The first folder holding all `filenames` (each possibly with a '.gz' variant)."""
    places = []
    if data_home is not None:
        places += [Path(data_home) / dataset, Path(data_home)]
    env = os.environ.get("FASTFIRE_DATA")
    places.append(Path(env) / dataset if env else None)
    places.append(Path(_SYSTEM_DATA) / dataset)
    for place in places:
        if place is None:
            continue
        found = []
        for options in filenames:
            hit = next((place / f for f in options if (place / f).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    looked = "\n".join(
        f"  - {p}" if p is not None else "  - $FASTFIRE_DATA/" + dataset + " (FASTFIRE_DATA is not set)"
        for p in places
    )
    raise FileNotFoundError(
        f"{dataset} not found (files {', '.join(o[0] for o in filenames)}). Looked in:\n{looked}\n"
        f"{how_to_get}"
    )


def _check_subset(subset):
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test'; got {subset!r}")


def load_fashion_mnist(subset="train", data_home=None, flatten=True):
    """Load Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from local IDX files.

    Looks in `data_home` (and ``data_home/fashion-mnist``), then ``$FASTFIRE_DATA/fashion-mnist``,
    then ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``). Nothing is
    downloaded.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        60,000 training or 10,000 test images.
    data_home : str or path-like, default=None
        A folder to look in first.
    flatten : bool, default=True
        Return images as rows of 784 pixels; False keeps them 28 x 28.

    Returns
    -------
    X : ndarray of shape (n, 784) or (n, 28, 28), dtype float32
        Pixels scaled to [0, 1].
    y : ndarray of shape (n,), dtype int64
        Classes 0-9.

    Raises
    ------
    FileNotFoundError
        No folder holds the files; the message lists every place looked in and how to get them.
    """
    _check_subset(subset)
    prefix = "train" if subset == "train" else "t10k"
    images, labels = _find(
        "fashion-mnist",
        [[f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"],
         [f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels-idx1-ubyte"]],
        data_home,
        "Get the data with `apt install dataset-fashion-mnist` (Debian), or download the four "
        "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into "
        "$FASTFIRE_DATA/fashion-mnist and set FASTFIRE_DATA.",
    )
    X = load_idx(images)
    y = load_idx(labels).astype(np.int64)
    if X.ndim != 3 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{images}: unexpected shapes {X.shape} (images) and {y.shape} (labels)")
    X = X.astype(np.float32)
    X *= np.float32(1.0 / 255.0)
    if flatten:
        X = X.reshape(X.shape[0], -1)
    return X, y


_MULAN_HOW = ("Get the Mulan multi-label datasets (https://mulan.sourceforge.net/datasets-mlc.html), "
              "unpack them into $FASTFIRE_DATA/{0} and set FASTFIRE_DATA.")


def load_bibtex(subset="train", data_home=None):
    """Load Bibtex (Katakis et al. 2008; 1,836 features, 159 labels) from its Mulan ARFF files.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        4,880 training or 2,515 test entries.
    data_home : str or path-like, default=None
        A folder to look in before ``$FASTFIRE_DATA/bibtex``.

    Returns
    -------
    X, Y, label_names
        As :func:`load_arff`.
    """
    _check_subset(subset)
    (path,) = _find("bibtex", [[f"bibtex-{subset}.arff", f"bibtex-{subset}.arff.gz"]], data_home,
                    _MULAN_HOW.format("bibtex"))
    return load_arff(path, n_labels=159)


def load_corel5k(subset="train", data_home=None):
    """Load Corel5k (Duygulu et al. 2002; 499 features, 374 labels) from its Mulan ARFF files.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        4,500 training or 500 test images.
    data_home : str or path-like, default=None
        A folder to look in before ``$FASTFIRE_DATA/corel5k``.

    Returns
    -------
    X, Y, label_names
        As :func:`load_arff`.
    """
    _check_subset(subset)
    (path,) = _find("corel5k", [[f"Corel5k-{subset}-sparse.arff", f"Corel5k-{subset}.arff",
                                 f"Corel5k-{subset}-sparse.arff.gz"]], data_home,
                    _MULAN_HOW.format("corel5k"))
    return load_arff(path, n_labels=374)


# ---------------------------------------------------------------------------------------------
# synthetic extreme classification
