"""LSH active-neuron selection (SLIDE: Chen et al., MLSys 2020; Daghaghi et al., MLSys 2021).

For each sample, only the output neurons whose weight vectors collide with the layer's input in
``L`` hash tables (``K`` hashes concatenated per table) are computed, trained and updated.

The pieces:

- :class:`LSH` — the selector (parameters and schedule decisions), registered as ``"lsh"``;
- :class:`LSHLayer` — the layer it builds: neuron-major weights, hash functions, tables and the
  upkeep state; its output ActiveSet is sparse (``indptr`` / ``indices`` / ``values``);
- kernels in ``fastfire._core._lsh`` (hashing, tables, queries) and ``fastfire._core._active``
  (forward/backward restricted to the active sets, sparse losses).

Weights. The layer stores ``Wt`` of shape ``(n_out, n_in)`` C-contiguous (a neuron's weights are
one contiguous row) and exposes ``coef = Wt.T``, a Fortran-ordered ``(n_in, n_out)`` view of the
same memory: the estimator's ``coefs_`` is that view, so scikit-learn's layout and every update
stay shared without a copy.

Training. During ``fit`` the output layer's active set of a sample is: its true labels (when
``label_forcing``), then the retrieved neurons chosen by ``policy`` (at most ``budget``), then
random neurons until ``min_active`` are active. Gradients exist for the touched rows only and the
optimizer updates those rows (lazy Adam with per-row step counters). Prediction (``predict``,
``predict_proba``, ``predict_topk(exact=True)``) scores every neuron exactly; the tables serve
``predict_topk(exact=False)``.

Persistence. Hash functions are redrawn from the layer's seed and tables are rebuilt from the
current weights when a model is loaded (``fastfire.load``) or unpickled: they are a pure function
of (seed, weights, rebuild number), so nothing but the seed and that number are stored. The
rebuild number only matters on wide layers, whose tables each hold a random group of the neurons
(``rebuild_sample``): an unpickled layer rebuilds the same groups, a loaded model draws the
groups of rebuild 0, so ``predict_topk(exact=False)`` may differ slightly after ``fastfire.load``
there (exact prediction never uses the tables). The seed is the selector's
``random_state`` or, when that is None, one drawn from the estimator's ``random_state`` and kept
in the estimator (``_selector_seeds``).
"""

import math
import numbers

import numpy as np
import scipy.sparse as sp

from fastfire._core import _active, _lsh
from fastfire._core._dense import ACTIVATIONS, gemm, take_rows
from fastfire.nn.active import ActiveSet
from fastfire.nn.layers import DenseLayer
from fastfire.nn.losses import SparseLogisticCrossEntropy, SparseSoftmaxCrossEntropy
from fastfire.nn.optimizers import BatchRowGrad, RowGrad
from fastfire.nn.selectors import Selector, register_selector

__all__ = ["LSH", "LSHLayer", "SparseInput", "SparseInputLayer"]

_FAMILIES = {"simhash": _lsh.SIMHASH, "wta": _lsh.WTA, "dwta": _lsh.DWTA}
_POLICIES = {"union": _lsh.UNION, "topk": _lsh.TOPK, "threshold": _lsh.THRESHOLD}
_BUCKET_POLICIES = {"fifo": _lsh.FIFO, "reservoir": _lsh.RESERVOIR}
_REHASH = ("auto", "fixed", "decay", "change", "never")

#: ``rehash="auto"`` on a wide layer (:meth:`LSHLayer.is_wide`): rebuild every this many
#: training samples. At the
#: Amazon-670K shape (bench/RESULTS-lsh.md, "Cheap rebuilds"), held-out P@1 after 2 epochs
#: was 0.739 with a rebuild every 2,048 samples, 0.666 every 4,096, 0.175 every 8,192 and 0.041
#: with the decaying schedule.
AUTO_WIDE_PERIOD = 2048
_LOSSES = {"softmax": SparseSoftmaxCrossEntropy, "logistic": SparseLogisticCrossEntropy}

#: SimHash of dense inputs uses a GEMM against a dense copy of the projections when it has at
#: most this many entries (n_in * K * L); larger (first-layer) families use the sparse kernels.
_GEMM_PROJECTION_FLOATS = 1 << 22

#: Neurons gathered per call when tables are rebuilt from groups of neurons (bounds the buffer).
_HASH_CHUNK_ROWS = 16384


_BLAS_CONTROLLER = None


def _single_threaded_blas():
    """Context capping BLAS at one thread: the rebuild's GEMM is already split over
    ``n_threads`` OpenMP blocks, and a multi-threaded BLAS inside each block oversubscribes the
    cores (a 670K-neuron rebuild measured 2.2x slower at 2 threads without the cap)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _check_int(name, value, low, high=None, none_ok=False):
    if value is None and none_ok:
        return
    ok = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        rng = f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
        extra = " or None" if none_ok else ""
        raise ValueError(f"The '{name}' parameter of LSH must be an int in the range {rng}{extra}. "
                         f"Got {value!r} instead.")


def _check_real(name, value, low, high, low_open=False):
    ok = isinstance(value, (numbers.Real, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = ("(" if low_open else "[") + f"{low}, {high}]"
        raise ValueError(f"The '{name}' parameter of LSH must be a float in the range {bound}. "
                         f"Got {value!r} instead.")


def _check_option(name, value, options):
    if value not in options:
        raise ValueError(f"The '{name}' parameter of LSH must be one of {sorted(options)}. "
                         f"Got {value!r} instead.")


@register_selector
class LSH(Selector):
    """Select each sample's active neurons by locality-sensitive hashing (SLIDE).

    Parameters
    ----------
    hash : {"simhash", "dwta", "wta"}, default="simhash"
        Hash family: signed random projections (dense or sparse inputs, sparse projections of
        density ``density``), densified winner-take-all (for sparse non-negative inputs; empty
        bins borrow a code) or plain winner-take-all.
    k : int, default=8
        Hashes concatenated into one table key.
    l : int, default=32
        Number of tables.
    bin_size : int, default=8
        Coordinates per WTA/DWTA hash (ignored by SimHash).
    density : float in (0, 1], default=1/3
        Fraction of non-zero entries of each SimHash projection (signs +-1).
    range_pow : int, default=18
        Keys wider than ``range_pow`` bits are folded into ``2**range_pow`` buckets.
    capacity : int, default=128
        Most neuron ids one bucket keeps.
    bucket_policy : {"reservoir", "fifo"}, default="reservoir"
        Which ids an overflowing bucket keeps: a uniform sample, or the last inserted
        (SLIDE's ring buffer; neurons are inserted in id order).
    policy : {"topk", "union", "threshold"}, default="topk"
        How the retrieved buckets become the active set: the ``budget`` neurons found in most
        tables (the best similarity estimate), their union in table order (SLIDE's vanilla
        sampling), or those found in at least ``threshold`` tables. With "union" the
        retrieved set is biased to the first tables' buckets; on a 100K-label problem
        (bench/RESULTS-lsh.md, "policy") exact P@1 collapsed after 3 epochs with "union"
        (0.346 to 0.042) and held with "topk".
    budget : int, default=500
        Most retrieved neurons per sample (true labels not counted).
    threshold : int, default=2
        Tables a neuron must be found in for ``policy="threshold"``.
    label_forcing : bool, default=True
        During training, add the sample's true labels to the output layer's active set.
    min_active : int, default=1000
        During training, fill the active set with random neurons up to this size. Retrieved
        neurons alone are "hard" negatives: labels that are never retrieved (a large bias, a
        weight vector pointing away from typical inputs) are then never pushed down and win
        at exact prediction time. Mixing both works best (measured in bench/RESULTS-lsh.md,
        "candidates": 600 labels, P@1 0.52 with 300 retrieved only, 0.77 with 300 random
        only, 0.80 with 150 retrieved + 150 random, 0.76 with every label active).
    rehash : {"auto", "decay", "fixed", "change", "never"}, default="auto"
        Table upkeep. ``"auto"``: on a wide layer, one whose tables can hold only a small part
        of its neurons (more than ``4 * capacity * n_buckets`` neurons, 131,072 with the defaults),
        ``"fixed"`` every ``min(rehash_every, AUTO_WIDE_PERIOD)`` = 2,048 samples, because the
        weights of such a layer move away from their buckets fast (a decaying schedule let P@1
        at 670K labels collapse to 0.04, bench/RESULTS-lsh.md); on other layers ``"decay"``.
        Otherwise: rebuild every ``rehash_every`` training samples (``"fixed"``); the same
        with the period multiplied by ``rehash_growth`` after each rebuild (``"decay"``, the
        exponentially decaying frequency of the SLIDE paper); or check every ``rehash_every``
        samples the codes of ``change_sample`` random neurons and rebuild when more than
        ``change_threshold`` of them changed bucket in some table (``"change"``).
    rehash_every : int, default=6400
        Period (in training samples) of the schedule.
    rehash_growth : float, default=1.5
        Factor applied to the period after each rebuild with ``rehash="decay"``.
    new_hashes_every : int or None, default=None
        Draw new hash functions (then rebuild) every this many training samples.
    change_threshold : float, default=0.1
        Fraction of probed neurons whose bucket changed that triggers a rebuild.
    change_sample : int, default=1000
        Neurons probed by ``rehash="change"``.
    rebuild_sample : float in (0, 1] or "auto", default=1.0
        Fraction ``f`` of the neurons hashed into each table at a rebuild: below 1 the neurons
        are split at random (anew at every rebuild) into ``G = round(1 / f)`` groups and group
        ``g`` fills tables ``g, g + G, ...``, so every neuron is in ``L / G`` tables and a
        rebuild costs about ``1 / G`` of hashing every neuron into every table. ``"auto"``:
        ``min(1, 4 * capacity * n_buckets / n_out)`` (5 groups at 670,091 outputs). Cheaper,
        but less accurate: at 670K labels P@1 0.698 with 5 groups vs 0.739 with every neuron
        in every table (bench/RESULTS-lsh.md, "Cheap rebuilds"); ``n_projections`` cuts the
        cost without that loss.
    n_projections : int, None or "auto", default="auto"
        SimHash only. None: ``k * l`` independent projections. An int: a pool of that many
        projections shared by the tables, each table's ``k`` bits being ``k`` distinct
        projections of the pool drawn at random; a rebuild then computes ``n_projections``
        instead of ``k * l`` projections per neuron (the tables are correlated where they
        share projections). ``"auto"``: ``max(k, k * l // 4)`` (64) on a layer with more than
        ``4 * capacity * n_buckets`` neurons (131,072 with the defaults), None otherwise. At
        670K labels a pool of 64 made a rebuild 1.6x cheaper than 256 projections and P@1 did
        not drop (0.750 vs 0.739; bench/RESULTS-lsh.md, "Cheap rebuilds").
    loss : {"softmax", "logistic"}, default="softmax"
        Output loss over the active set (output layer): softmax with the target spread over
        the true labels (SLIDE), or independent logistic outputs. The model's outputs follow
        it: with "softmax", ``predict_proba`` is the softmax over every label (rows sum to 1,
        also for multilabel targets) and ``predict`` marks the labels above 0.5, so rank with
        ``predict_topk`` instead; with "logistic" they are per-label probabilities.
    deterministic : bool, default=False
        Accumulate gradients deterministically (same bits for every thread count). The default,
        HOGWILD, lets threads add into shared gradient rows without synchronisation where
        that is faster: for a CSR (first-layer) input; NOT deterministic with more than one
        thread there. With a dense input (the usual output layer over a hidden layer) both
        modes sum each weight-gradient row on one thread, which measured faster than HOGWILD
        (bench/RESULTS-lsh.md, "backward"); the default then sums the gradient passed to the
        layer below row by row into per-thread accumulators (each weight row read once), which
        gives the same bits for a given thread count but not across thread counts.
    random_state : int or None, default=None
        Seed of the hash functions, of the random fill and of reservoir sampling. None: a seed
        drawn from the estimator's ``random_state``.

    Examples
    --------
    >>> from fastfire import MLPClassifier
    >>> from fastfire.nn.lsh import LSH
    >>> clf = MLPClassifier((128,), selection=["dense", LSH(k=8, l=32, budget=500)])
    """

    name = "lsh"

    def __init__(self, hash="simhash", k=8, l=32, *, bin_size=8, density=1 / 3, range_pow=18,
                 capacity=128, bucket_policy="reservoir", policy="topk", budget=500,
                 threshold=2, label_forcing=True, min_active=1000, rehash="auto",
                 rehash_every=6400, rehash_growth=1.5, new_hashes_every=None,
                 change_threshold=0.1, change_sample=1000, rebuild_sample=1.0,
                 n_projections="auto", loss="softmax", deterministic=False, random_state=None):
        self.hash = hash
        self.k = k
        self.l = l
        self.bin_size = bin_size
        self.density = density
        self.range_pow = range_pow
        self.capacity = capacity
        self.bucket_policy = bucket_policy
        self.policy = policy
        self.budget = budget
        self.threshold = threshold
        self.label_forcing = label_forcing
        self.min_active = min_active
        self.rehash = rehash
        self.rehash_every = rehash_every
        self.rehash_growth = rehash_growth
        self.new_hashes_every = new_hashes_every
        self.change_threshold = change_threshold
        self.change_sample = change_sample
        self.rebuild_sample = rebuild_sample
        self.n_projections = n_projections
        self.loss = loss
        self.deterministic = deterministic
        self.random_state = random_state
        self.validate()

    def validate(self):
        """Raise a ValueError naming the first bad parameter."""
        _check_option("hash", self.hash, _FAMILIES)
        _check_int("k", self.k, 1, 31)
        _check_int("l", self.l, 1, 4096)
        _check_int("bin_size", self.bin_size, 2, 1 << 16)
        _check_real("density", self.density, 0, 1, low_open=True)
        _check_int("range_pow", self.range_pow, 1, 30)
        _check_int("capacity", self.capacity, 1, 1 << 20)
        _check_option("bucket_policy", self.bucket_policy, _BUCKET_POLICIES)
        _check_option("policy", self.policy, _POLICIES)
        _check_int("budget", self.budget, 0)
        _check_int("threshold", self.threshold, 1, self.l)
        if not isinstance(self.label_forcing, (bool, np.bool_)):
            raise ValueError(f"The 'label_forcing' parameter of LSH must be a bool. Got {self.label_forcing!r} instead.")
        _check_int("min_active", self.min_active, 0)
        _check_option("rehash", self.rehash, _REHASH)
        _check_int("rehash_every", self.rehash_every, 1)
        _check_real("rehash_growth", self.rehash_growth, 1, 1e6)
        _check_int("new_hashes_every", self.new_hashes_every, 1, none_ok=True)
        _check_real("change_threshold", self.change_threshold, 0, 1)
        _check_int("change_sample", self.change_sample, 1)
        if not (isinstance(self.rebuild_sample, str) and self.rebuild_sample == "auto"):
            _check_real("rebuild_sample", self.rebuild_sample, 0, 1, low_open=True)
        if not (isinstance(self.n_projections, str) and self.n_projections == "auto"):
            _check_int("n_projections", self.n_projections, 1, 1 << 16, none_ok=True)
        _check_option("loss", self.loss, _LOSSES)
        if not isinstance(self.deterministic, (bool, np.bool_)):
            raise ValueError(f"The 'deterministic' parameter of LSH must be a bool. Got {self.deterministic!r} instead.")
        _check_int("random_state", self.random_state, 0, 2**63 - 1, none_ok=True)

    # ---------------------------------------------------------------- selector protocol
    def make_layer(self, coef, intercept, activation):
        """Build an :class:`LSHLayer` (neuron-major weights, tables built from ``coef``)."""
        self.validate()
        return LSHLayer(coef, intercept, activation, self)

    def select(self, layer, inputs, training):
        """Active output neurons per sample during training; None (exact) otherwise."""
        if not training:
            return None
        return layer.query(inputs, layer.n_threads, labels=self.label_forcing,
                           min_active=self.min_active)

    def after_update(self, layer):
        """Table upkeep after an optimizer step, by the ``rehash`` schedule."""
        st = layer.upkeep
        rehash = st.get("schedule") or layer.resolve_schedule()
        n = layer.last_batch_size
        st["since_rehash"] += n
        st["since_new"] += n
        if self.new_hashes_every is not None and st["since_new"] >= self.new_hashes_every:
            layer.draw_hash_functions(new=True)
            layer.build_tables()
            st["since_new"] = st["since_rehash"] = 0
            return
        if rehash == "never" or st["since_rehash"] < st["period"]:
            return
        st["since_rehash"] = 0
        if rehash == "change":
            if layer.changed_fraction(self.change_sample) > self.change_threshold:
                layer.build_tables()
            return
        layer.build_tables()
        if rehash == "decay":
            st["period"] = int(math.ceil(st["period"] * self.rehash_growth))


class LSHLayer:
    """A dense layer computed only on per-sample active output sets chosen by hash tables.

    Same interface as :class:`~fastfire.nn.layers.DenseLayer` (``forward``, ``backward``,
    ``activation_backward``, ``coef``, ``intercept``, ``coef_grad``, ``intercept_grad``,
    ``selector``); after ``backward`` the gradients are :class:`~fastfire.nn.optimizers.RowGrad`
    objects (the touched rows only). The output ActiveSet is sparse during training and dense
    (every neuron, exact) otherwise.

    Parameters
    ----------
    coef : ndarray of shape (n_in, n_out), float32
        Initial weights; used in place when Fortran-ordered (``Wt.T``), else copied once.
    intercept : ndarray of shape (n_out,), float32
        Biases, used in place.
    activation : str
        Activation of the layer ("identity" for the output layer).
    selector : LSH
        The parameters.
    """

    def __init__(self, coef, intercept, activation, selector):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}.")
        self.Wt = np.ascontiguousarray(np.asarray(coef, dtype=np.float32).T)
        self.coef = self.Wt.T
        self.intercept = intercept
        self.activation = activation
        self.selector = selector
        self.coef_grad = None
        self.intercept_grad = None
        self.n_threads = 1
        self.last_batch_size = 0
        self.seed = int(selector.random_state if selector.random_state is not None
                        else getattr(selector, "_seed", 0))
        self.hash_draw = 0
        self.step = 0
        self.upkeep = {"period": selector.rehash_every, "since_rehash": 0, "since_new": 0}
        self._act_code = ACTIVATIONS[activation]
        self._targets = None
        self._reset_buffers()
        self.draw_hash_functions()
        self.build_tables()
        self.resolve_schedule()

    # ---------------------------------------------------------------- geometry
    @property
    def n_in(self):
        return self.Wt.shape[1]

    @property
    def n_out(self):
        return self.Wt.shape[0]

    @property
    def sparse_loss(self):
        """The loss over the active set for an output layer (``selector.loss``)."""
        return _LOSSES[self.selector.loss]()

    def _buffer(self, name, shape, dtype):
        """A work array of ``shape`` viewed on a grow-only buffer (no allocation per batch)."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 1), dtype=dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)

    def _reset_buffers(self):
        self._buffers = {}
        self._inputs = None
        self._active = None
        self._delta = None
        self._touched = None
        self.n_forced = None
        self._mark = np.full(self.n_out, -1, dtype=np.int32)
        self._tables = None

    # ---------------------------------------------------------------- hashing
    def draw_hash_functions(self, new=False):
        """Draw the K*L hash functions from (seed, draw count); ``new`` advances the count."""
        if new:
            self.hash_draw += 1
        sel = self.selector
        rng = np.random.default_rng([self.seed, self.hash_draw, 0x15A])
        d, K, L = self.n_in, sel.k, sel.l
        n_fn = K * L
        family = _FAMILIES[sel.hash]
        pool_map = None
        n_pool = self.pool_size()
        if family == _lsh.SIMHASH and n_pool is not None:
            counts_p = np.maximum(1, rng.binomial(d, sel.density, n_pool))
            idx_p = [np.sort(rng.choice(d, c, replace=False)) for c in counts_p]
            val_p = [rng.choice(np.array([-1.0, 1.0], dtype=np.float32), c) for c in counts_p]
            # table t's K bits: K distinct projections of the pool, in decreasing order (a
            # table's key is then one bit extraction from a row's sign mask at rebuilds)
            pool_map = np.concatenate([np.sort(rng.choice(n_pool, K, replace=False))[::-1]
                                       for _ in range(L)]).astype(np.int32)
            counts = counts_p[pool_map]
            fn_idx = np.concatenate([idx_p[h] for h in pool_map])
            fn_val = np.concatenate([val_p[h] for h in pool_map])
            key_space = 2 ** K
        elif family == _lsh.SIMHASH:
            counts = np.maximum(1, rng.binomial(d, sel.density, n_fn))
            fn_idx = np.concatenate([np.sort(rng.choice(d, c, replace=False)) for c in counts])
            fn_val = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), fn_idx.size)
            key_space = 2 ** K
        else:
            b = sel.bin_size
            if b > d:
                raise ValueError(f"The 'bin_size' parameter of LSH ({b}) exceeds the layer's "
                                 f"{d} inputs.")
            if family == _lsh.WTA:
                fn_idx = np.concatenate([rng.choice(d, b, replace=False) for _ in range(n_fn)])
            else:  # DWTA: bins cut from concatenated random permutations
                n_perm = -(-n_fn * b // d)
                fn_idx = np.concatenate([rng.permutation(d) for _ in range(n_perm)])[: n_fn * b]
            counts = np.full(n_fn, b)
            fn_val = np.tile(np.arange(b, dtype=np.float32), n_fn)
            key_space = (b + 1) ** K
        fn_indptr = np.zeros(n_fn + 1, dtype=np.int64)
        np.cumsum(counts, out=fn_indptr[1:])
        fn_idx = fn_idx.astype(np.int32)
        fn_val = np.ascontiguousarray(fn_val, dtype=np.float32)
        fn_of = np.repeat(np.arange(n_fn, dtype=np.int32), counts)
        order = np.lexsort((fn_val, fn_of, fn_idx))          # by feature, then function, position
        ft_indptr = np.zeros(d + 1, dtype=np.int64)
        np.cumsum(np.bincount(fn_idx, minlength=d), out=ft_indptr[1:])
        if key_space > 2 ** sel.range_pow:
            fold, n_buckets = sel.range_pow, 2 ** sel.range_pow
        else:
            fold, n_buckets = 0, int(key_space)
        if family == _lsh.SIMHASH and d * n_fn <= _GEMM_PROJECTION_FLOATS:
            # dense inputs are hashed with one GEMM against the (d, K*L) projection matrix
            P = np.zeros((d, n_fn), dtype=np.float32)
            P[fn_idx, np.repeat(np.arange(n_fn), counts)] = fn_val
        else:
            P = None
        pool_P = None
        if P is not None and pool_map is not None:
            # the pool itself (P's columns are copies of its columns): rebuilds hash with this
            pool_P = np.zeros((d, n_pool), dtype=np.float32)
            pool_P[np.concatenate(idx_p), np.repeat(np.arange(n_pool), counts_p)] = \
                np.concatenate(val_p)
        self.family = {
            "P": P, "pool_P": pool_P, "pool_map": pool_map,
            "family": family, "K": K, "L": L, "bin_size": sel.bin_size, "range_pow": fold,
            "seed": int(np.random.default_rng([self.seed, self.hash_draw, 7]).integers(2**63)),
            "fn_indptr": fn_indptr, "fn_idx": fn_idx, "fn_val": fn_val,
            "ft_indptr": ft_indptr, "ft_fn": fn_of[order], "ft_val": fn_val[order],
        }
        self.n_buckets = n_buckets

    def is_wide(self):
        """True when one table holds a small part of the neurons: more than ``4 * capacity *
        n_buckets`` of them (131,072 with the defaults). ``rehash``, ``n_projections`` and
        ``rebuild_sample`` set to "auto" decide by it."""
        sel = self.selector
        if sel.hash == "simhash":
            key_space = 2 ** sel.k
        else:
            key_space = (sel.bin_size + 1) ** sel.k
        n_buckets = min(key_space, 2 ** sel.range_pow)
        return 4 * sel.capacity * n_buckets < self.n_out

    def pool_size(self):
        """SimHash projections shared by the tables (``n_projections``); None: ``k * l``
        independent ones. ``"auto"``: ``max(k, k * l // 4)`` (64 with the defaults) on a wide
        layer (:meth:`is_wide`), None otherwise."""
        sel = self.selector
        pool = getattr(sel, "n_projections", None)      # selectors pickled before it existed
        if pool == "auto":
            wide = sel.hash == "simhash" and self.is_wide()
            return max(sel.k, sel.k * sel.l // 4) if wide else None
        if pool is None:
            return None
        if sel.hash != "simhash":
            raise ValueError("The 'n_projections' parameter of LSH applies to hash='simhash' only.")
        if pool < sel.k:
            raise ValueError(f"The 'n_projections' parameter of LSH ({pool}) must be at least "
                             f"k ({sel.k}).")
        return pool

    def _family_args(self):
        f = self.family
        return (f["family"], f["K"], f["L"], f["bin_size"], f["range_pow"], f["seed"],
                f["fn_indptr"], f["fn_idx"], f["fn_val"], f["ft_indptr"], f["ft_fn"], f["ft_val"])

    def hash_rows(self, inputs, n_threads):
        """Bucket ids ``(n, L)`` of an ActiveSet's rows (dense or CSR) or a dense array."""
        if isinstance(inputs, np.ndarray):
            inputs = ActiveSet.from_dense(np.ascontiguousarray(inputs, dtype=np.float32))
        out = np.empty((inputs.n_samples, self.selector.l), dtype=np.int32)
        f = self.family
        if inputs.is_dense and f["P"] is not None and inputs.n_samples:
            S = self._buffer("proj", (inputs.n_samples, f["P"].shape[1]), np.float32)
            gemm(inputs.values, f["P"], S, n_threads=n_threads)
            _lsh.simhash_from_projections(S, f["K"], f["L"], f["range_pow"], f["seed"], out,
                                          n_threads)
        elif inputs.is_dense:
            _lsh.hash_dense(inputs.values, *self._family_args(), out, n_threads)
        else:
            _lsh.hash_csr(inputs.indptr, inputs.indices, inputs.values, inputs.n_neurons,
                          *self._family_args(), out, n_threads)
        return out

    def resolve_schedule(self):
        """The upkeep schedule this layer follows (``rehash``, with ``"auto"`` resolved by
        width); sets the period when first resolved and returns the schedule's name."""
        sel, st = self.selector, self.upkeep
        rehash = sel.rehash
        if rehash == "auto":
            wide = self.is_wide()
            rehash = "fixed" if wide else "decay"
            if wide:
                st["period"] = min(sel.rehash_every, AUTO_WIDE_PERIOD)
        st["schedule"] = rehash
        return rehash

    def table_fraction(self):
        """Fraction of the neurons hashed into each table at a rebuild (``rebuild_sample``).

        ``"auto"``: ``min(1, 4 * capacity * n_buckets / n_out)``. When the layer has many more
        neurons than one table holds (``n_buckets * capacity``), the bucket policy drops most of
        them anyway; filling each table from a uniform random subset of four times its capacity
        keeps a typical bucket a uniform sample of its members (so does the reservoir policy)
        at a fraction of the hashing. At the Amazon-670K shape (K=8: 256 buckets of 128) that is
        19.6 % of the neurons per table; up to 131,072 neurons it is all of them.
        """
        frac = getattr(self.selector, "rebuild_sample", 1.0)
        if frac == "auto":
            frac = 4.0 * self.selector.capacity * self.n_buckets / max(self.n_out, 1)
        return min(1.0, float(frac))

    def _table_groups(self, draw):
        """Split of the neurons for the rebuild numbered ``draw``: None (every table holds every
        neuron), or ``(groups, tables)``: ``G = round(1 / table_fraction())`` sorted random
        disjoint groups of ``n_out // G`` neurons (``groups``, int32 ``(G, m)``; the ``n_out
        % G`` left over sit out this rebuild), group ``g`` filling tables ``g, g + G, ...``.
        Every neuron is then hashed into ``L / G`` tables instead of ``L``."""
        L = self.selector.l
        G = min(L, self.n_out, int(round(1.0 / self.table_fraction())))
        if G <= 1:
            return None
        rng = np.random.default_rng([self.seed, self.hash_draw, draw, 0x5AB])
        m = self.n_out // G
        groups = rng.permutation(self.n_out)[:G * m].astype(np.int32).reshape(G, m)
        groups.sort(axis=1)
        return groups, [np.arange(g, L, G, dtype=np.int32) for g in range(G)]

    def build_tables(self, n_threads=None, draw=None):
        """Hash the neurons' weight vectors and rebuild the L tables (parallel over tables).

        Every table holds every neuron, or (:meth:`table_fraction` below one) each holds one of
        ``G`` random disjoint groups of them (:meth:`_table_groups`), drawn from (seed, hash
        draw, ``draw``); ``draw`` defaults to the number of rebuilds so far, and the tables are
        a pure function of (seed, weights, draw). The previous tables' arrays are rewritten in
        place when their shapes allow (``tables`` and ``table_buckets`` taken before a rebuild
        then show the new tables).
        """
        n_threads = self.n_threads if n_threads is None else n_threads
        sel = self.selector
        draw = getattr(self, "n_rebuilds", 0) if draw is None else draw
        split = self._table_groups(draw)
        if split is None:
            parts = [(None, None)]
            m = self.n_out
        else:
            groups, tables = split
            parts = list(zip(groups, tables))
            m = groups.shape[1]
        # The previous tables' arrays are rewritten in place when the shapes allow: fresh
        # ones cost ~170 MB of page faults per rebuild at 670K neurons.
        buckets = self._reused("table_buckets", (sel.l, m), np.int32)   # table-major
        with _single_threaded_blas():
            for neurons, tabs in parts:
                if neurons is None:
                    self._hash_table_major(self.Wt, buckets, 0, tabs, n_threads)
                    continue
                for start in range(0, m, _HASH_CHUNK_ROWS):   # bounded gather buffer
                    stop = min(start + _HASH_CHUNK_ROWS, m)
                    rows = self._buffer("gather", (stop - start, self.n_in), np.float32)
                    take_rows(self.Wt, neurons[start:stop].astype(np.int64), rows, n_threads)
                    self._hash_table_major(rows, buckets, start, tabs, n_threads)
        if split is None:
            self.table_neurons = None
        else:
            self.table_neurons = np.ascontiguousarray(
                groups[np.arange(sel.l) % groups.shape[0]])     # (L, m): the ids of each table
        self.table_buckets = buckets
        self.table_draw = draw
        old = self._tables if self._tables is not None else (None, None)
        offsets = self._reused(old[0], (sel.l, self.n_buckets + 1), np.int32)
        ids = self._reused(old[1], (sel.l, self.n_out), np.int32)
        self.dropped = _lsh.build_tables(buckets, self.n_buckets, sel.capacity,
                                         _BUCKET_POLICIES[sel.bucket_policy],
                                         self.family["seed"], offsets, ids, self.table_neurons,
                                         n_threads)
        self._tables = (offsets, ids)
        self.n_rebuilds = getattr(self, "n_rebuilds", 0) + 1
        self.tables_step = self.step            # the tables follow the weights of this step
        if hasattr(self, "upkeep"):
            self.upkeep["since_rehash"] = 0     # the schedule counts from the last rebuild

    def _reused(self, array, shape, dtype):
        """``array`` (or the attribute of that name) when it has this shape and dtype, else a new
        empty array."""
        if isinstance(array, str):
            array = getattr(self, array, None)
        if array is not None and array.shape == shape and array.dtype == dtype:
            return array
        return np.empty(shape, dtype=dtype)

    def _hash_table_major(self, rows, out, col0, tables, n_threads):
        """Buckets of dense ``rows`` in ``tables`` (None: all) written to
        ``out[t, col0:col0 + len(rows)]``."""
        f = self.family
        n = rows.shape[0]
        if f.get("pool_P") is not None and n:
            # tables sharing a pool of projections: projected against the pool, bits picked
            K = f["K"]
            bits = f["pool_map"] if tables is None else \
                f["pool_map"][(tables[:, None] * K + np.arange(K)).ravel()]
            _lsh.simhash_rows_table_major(rows, f["pool_P"], K, f["L"], f["range_pow"], f["seed"],
                                          out, col0, tables, n_threads,
                                          np.ascontiguousarray(bits, dtype=np.int32))
        elif f["P"] is not None and n:
            P = f["P"]
            if tables is not None:
                K = f["K"]
                cols = (tables[:, None] * K + np.arange(K)).ravel()
                P = self._group_projections(tables, cols)
            _lsh.simhash_rows_table_major(rows, P, f["K"], f["L"], f["range_pow"], f["seed"], out,
                                          col0, tables, n_threads)
        else:
            res = self.hash_rows(rows, n_threads)
            tabs = slice(None) if tables is None else tables
            out[tabs, col0:col0 + n] = res[:, tabs].T

    def _group_projections(self, tables, cols):
        """The columns of the projection matrix for ``tables`` (cached per hash draw)."""
        cache = self.family.setdefault("P_groups", {})
        key = tables.tobytes()
        P = cache.get(key)
        if P is None:
            P = cache[key] = np.ascontiguousarray(self.family["P"][:, cols])
        return P

    def tables_current(self):
        """True when the tables were built after the last training step (from these weights,
        unless they were set from outside since, e.g. by early stopping)."""
        return self._tables is not None and getattr(self, "tables_step", None) == self.step

    @property
    def tables(self):
        """``(offsets, ids)``: ``ids[t, offsets[t, b]:offsets[t, b + 1]]`` are in bucket b of table t."""
        if self._tables is None:
            self.build_tables(draw=getattr(self, "table_draw", None))
        return self._tables

    def changed_fraction(self, n_probe):
        """Fraction of ``n_probe`` random tabled neurons whose bucket changed in some table
        (of the tables holding it)."""
        if self._tables is None:
            self.tables
        rng = np.random.default_rng([self.seed, self.step, 0xC4A])
        L, m = self.table_buckets.shape
        cols = rng.choice(m, min(n_probe, m), replace=False)
        stored = self.table_buckets[:, cols]                    # (L, p)
        if self.table_neurons is None:
            fresh = self.hash_rows(self.Wt[cols], self.n_threads)
            return float(np.mean((fresh != stored.T).any(axis=1)))
        ids = self.table_neurons[:, cols]                       # (L, p): other neurons per group
        uniq, inv = np.unique(ids, return_inverse=True)
        inv = inv.reshape(ids.shape)
        fresh = self.hash_rows(self.Wt[uniq], self.n_threads)  # (u, L)
        differs = fresh[inv, np.arange(L)[:, None]] != stored
        changed = np.zeros(uniq.shape[0], dtype=bool)
        np.logical_or.at(changed, inv.ravel(), differs.ravel())
        return float(changed.mean())

    # ---------------------------------------------------------------- selection
    def set_targets(self, target):
        """Store the batch's true labels (output layer): int class indices, an indicator
        (dense or CSR) or an ActiveSet of the label ids (its ``indptr`` / ``indices``); used for
        label forcing in the next training forward pass."""
        if isinstance(target, ActiveSet) and not target.is_dense:
            if target.n_neurons != self.n_out:
                raise ValueError(f"targets of {target.n_neurons} labels, the layer has "
                                 f"{self.n_out} outputs.")
            self._targets = (np.ascontiguousarray(target.indptr, dtype=np.int64),
                             np.ascontiguousarray(target.indices, dtype=np.int32))
        elif sp.issparse(target):
            Y = sp.csr_matrix(target)
            self._targets = (Y.indptr.astype(np.int64), Y.indices.astype(np.int32))
        else:
            target = np.asarray(target)
            if target.ndim == 1 and target.dtype.kind in "iu":
                n = target.shape[0]
                self._targets = (np.arange(n + 1, dtype=np.int64), target.astype(np.int32))
            elif target.ndim == 2 and target.shape[1] == self.n_out and target.shape[1] > 1:
                self._targets = self._indicator(target)
            else:
                raise ValueError(
                    "LSH selection on the output layer needs multiclass or multilabel targets "
                    f"(got targets of shape {target.shape}, dtype {target.dtype}); use "
                    "selection='dense' for binary classification and regression."
                )

    @staticmethod
    def _indicator(Y):
        Y = sp.csr_matrix(Y != 0)
        return Y.indptr.astype(np.int64), Y.indices.astype(np.int32)

    def query(self, inputs, n_threads, labels=False, min_active=0, budget=None, step=None):
        """Active set (ActiveSet pattern: ``indptr``, ``indices``) of every input row.

        ``labels``: put the stored batch targets first (``n_forced`` records how many).
        """
        sel = self.selector
        budget = sel.budget if budget is None else budget
        offsets, ids = self.tables
        qb = self.hash_rows(inputs, n_threads)
        n = qb.shape[0]
        if labels and self._targets is not None:
            l_indptr, l_idx = self._targets
            if l_indptr.shape[0] != n + 1:
                raise ValueError(f"targets have {l_indptr.shape[0] - 1} rows, inputs {n}.")
            max_labels = int(np.diff(l_indptr).max()) if n else 0
        else:
            l_indptr = np.empty(0, dtype=np.int64)
            l_idx = np.empty(0, dtype=np.int32)
            max_labels = 0
        budget = min(budget, self.n_out)
        min_active = min(min_active, self.n_out)
        cap = max(1, max_labels + max(budget, min_active))
        counts = np.empty(n, dtype=np.int32)
        n_forced = np.empty(n, dtype=np.int32)
        padded = np.empty((n, cap), dtype=np.int32)
        scratch, stamp = self._query_scratch(n, n_threads)
        _lsh.query(qb, offsets, ids, _POLICIES[sel.policy], budget, sel.threshold, l_indptr,
                   l_idx, min_active, self.n_out, sel.capacity, self.family["seed"],
                   self.step if step is None else step, counts, n_forced, padded, n_threads,
                   scratch, stamp)
        indptr = np.empty(n + 1, dtype=np.int64)
        indices = np.empty(int(counts.sum()), dtype=np.int32)
        _lsh.compact(counts, padded, indptr, indices, n_threads)
        self.n_forced = n_forced
        return ActiveSet(np.empty(0, dtype=np.float32), self.n_out, indptr=indptr, indices=indices)

    def _query_scratch(self, n, n_threads):
        """The per-thread marks kept between queries and the first stamp for ``n`` samples
        (``_lsh.query``'s ``scratch``/``stamp``): cleared only when created or when the stamps
        would pass ``2**31 - 1``."""
        scratch = self._buffers.get("query_scratch")
        stamp = self._buffers.get("query_stamp", 0)
        if scratch is None or scratch.shape[0] < n_threads or stamp + n > 2**31 - 1:
            scratch = np.full((n_threads, 2 * self.n_out), -1, dtype=np.int32)
            stamp = 0
            self._buffers["query_scratch"] = scratch
        self._buffers["query_stamp"] = stamp + n
        return scratch, stamp

    # ---------------------------------------------------------------- forward / backward
    def forward(self, inputs, n_threads, training=False):
        """Output for an input ActiveSet: sparse over the selected neurons during training
        (a dense ActiveSet of every neuron when the selector returns None)."""
        self.n_threads = n_threads
        active = self.selector.select(self, inputs, training)
        n = inputs.n_samples
        if active is None:
            out = np.empty((n, self.n_out), dtype=np.float32)
            if inputs.is_dense:
                gemm(inputs.values, self.Wt, out, trans_b=True, n_threads=n_threads)
            else:
                X = sp.csr_matrix((inputs.values, inputs.indices, inputs.indptr),
                                  shape=(n, inputs.n_neurons))
                out[...] = X @ self.coef
            out += self.intercept
            if self._act_code:
                values = _active_apply(out, self.activation)
                out = values
            self._inputs = inputs if training else None
            self._active = None
            return ActiveSet.from_dense(out)
        self._touched = None
        if training and inputs.is_dense:
            # the batch's touched rows serve both passes: the forward reads each weight row once
            # for all its entries, the backward sums each gradient row from them
            self._touched = self._touched_rows(active, n_threads)
            nt, rows, _, t_indptr, t_entries, t_sample = self._touched
            nnz = active.indices.shape[0]
            values = np.empty(nnz, dtype=np.float32)
            _active.active_forward_rows_dense(inputs.values, self.Wt, self.intercept, rows[:nt],
                                              t_indptr, t_entries, t_sample,
                                              self._buffer("entry_pos", (nnz,), np.int64),
                                              self._buffer("by_slot", (nnz,), np.float32),
                                              values, self._act_code, n_threads)
            out = ActiveSet(values, self.n_out, indptr=active.indptr, indices=active.indices)
        else:
            out = self.forward_active(inputs, active, n_threads)
        if training:
            self._inputs = inputs
            self.step += 1
            self.last_batch_size = n
        self._active = active
        return out

    def _touched_rows(self, active, n_threads):
        """``_active.touched_rows`` of an active set on the layer's buffers: ``(n_touched, rows,
        slot, t_indptr, t_entries, t_sample)``; the inverse of ``t_entries`` goes to the
        ``entry_pos`` buffer."""
        nnz = active.indices.shape[0]
        m = min(nnz, self.n_out)
        rows = self._buffer("rows", (m,), np.int32)
        slot = self._buffer("slot", (nnz,), np.int32)
        t_indptr = self._buffer("t_indptr", (m + 1,), np.int64)
        t_entries = self._buffer("t_entries", (nnz,), np.int64)
        t_sample = self._buffer("t_sample", (nnz,), np.int32)
        nt = _active.touched_rows(active.indptr, active.indices, self._mark, rows, slot,
                                  t_indptr, t_entries, t_sample,
                                  self._buffer("entry_pos", (nnz,), np.int64),
                                  _touched_counts(self._buffers, n_threads, self.n_out),
                                  n_threads)
        return nt, rows, slot, t_indptr, t_entries, t_sample

    def forward_active(self, inputs, active, n_threads):
        """Outputs of the neurons of a given active set (no training state kept)."""
        values = np.empty(active.indices.shape[0], dtype=np.float32)
        if inputs.is_dense:
            _active.active_forward_dense(inputs.values, self.Wt, self.intercept, active.indptr,
                                         active.indices, values, self._act_code, n_threads)
        else:
            _active.active_forward_csr(inputs.indptr, inputs.indices, inputs.values, self.Wt,
                                       self.intercept, active.indptr, active.indices, values,
                                       self._act_code, n_threads)
        return ActiveSet(values, self.n_out, indptr=active.indptr, indices=active.indices)

    def activation_backward(self, outputs, grad, n_threads):
        """Gather dLoss/d(outputs) (dense, from the next layer) at the active entries and apply
        the activation's derivative; kept for :meth:`backward` (``grad`` is not modified)."""
        if outputs.is_dense:
            from fastfire._core._dense import act_backward

            act_backward(outputs.values, grad, self._act_code, n_threads)
            self._delta = None
            return
        self._delta = np.empty(outputs.values.shape[0], dtype=np.float32)
        _active.active_act_backward(grad, outputs.indptr, outputs.indices, outputs.values,
                                    self._delta, self._act_code, n_threads)

    #: :meth:`backward` can leave the input gradient to the optimizer's update pass.
    defers_input_grad = True

    def backward(self, delta, n_threads, need_input_grad=True, defer_input_grad=False):
        """Row-sparse gradients of the mean loss (``coef_grad``/``intercept_grad`` become
        :class:`RowGrad`; for a dense input a :class:`BatchRowGrad`, computed by the optimizer in
        its update pass) and, when asked, dLoss/d(inputs) as a dense ``(n, n_in)`` array.

        ``delta`` is the flat per-entry gradient of the active set (from a sparse loss), or the
        dense array the network passes after :meth:`activation_backward` (then the gathered
        delta kept by that call is used).

        ``defer_input_grad``: where the input gradient would be summed row by row (dense input,
        HOGWILD mode), return None instead and let the optimizer write it into
        ``coef_grad.input_grad`` in its pass over the rows, before it updates them: each weight
        row is then read once per step instead of twice (same bits).
        """
        active, inputs = self._active, self._inputs
        if active is None:
            raise RuntimeError("LSHLayer.backward needs a training forward pass with an active set.")
        if delta.ndim == 2:
            delta = self._delta
        n = inputs.n_samples
        touched = getattr(self, "_touched", None) or self._touched_rows(active, n_threads)
        nt, rows, slot, t_indptr, t_entries, t_sample = touched
        hogwild = not self.selector.deterministic
        if inputs.is_dense:
            # Dense inputs (an output layer over a hidden layer): each gradient row is summed on
            # one thread, parallel over the touched rows, in both modes, and only when the
            # optimizer updates that row (BatchRowGrad: the row is applied while in cache, the
            # bias in the same pass; the input gradient below reads the weights before that
            # update). SLIDE's fused HOGWILD pass (samples in parallel, adding into shared rows;
            # removed) was slower on the 20K-label bench (bench/RESULTS-lsh.md, "backward"): the
            # rows a sample scatters into miss the cache and two threads contend for them.
            self.coef_grad = BatchRowGrad(rows[:nt], inputs.values, delta, active.indptr, slot,
                                          t_indptr[:nt + 1], t_entries, t_sample, 1.0 / n,
                                          n_threads)
            self.intercept_grad = self.coef_grad.bias_grad
        else:
            grad = self._buffer("grad", (nt, self.n_in), np.float32)
            bias_grad = self._buffer("bias_grad", (nt,), np.float32)
            _active.grad_rows_csr(inputs.indptr, inputs.indices, inputs.values, delta,
                                  active.indptr, slot, t_indptr, t_entries, t_sample, grad,
                                  bias_grad, 1.0 / n, hogwild, n_threads)
            self.coef_grad = RowGrad(rows[:nt], grad, "T")
            self.intercept_grad = RowGrad(rows[:nt], bias_grad.reshape(-1, 1), "col")
        if not need_input_grad:
            return None
        input_grad = self._buffer("input_grad", (n, self.n_in), np.float32)
        if hogwild and inputs.is_dense:
            # row by row, each weight row read once for all its entries, into per-thread
            # accumulators: the same result for a given thread count, not across counts
            partial = self._buffer("input_grad_partial", (max(n_threads - 1, 1), n, self.n_in),
                                   np.float32)
            if defer_input_grad:
                self.coef_grad.request_input_grad(input_grad, partial)
                return None
            _active.active_input_grad_rows(delta, self.Wt, rows[:nt], t_indptr, t_entries,
                                           t_sample, input_grad, partial, n_threads)
        else:
            _active.active_input_grad(delta, active.indptr, active.indices, self.Wt, input_grad,
                                      n_threads)
        return input_grad

    def release_buffers(self):
        """Drop saved inputs and the tables (rebuilt on first use)."""
        self._inputs = None
        self._active = None
        self._delta = None
        self._touched = None
        self._tables = None

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("Wt", "_inputs", "_active", "_delta", "_touched", "_tables", "table_buckets",
                    "table_neurons", "_buffers",
                    "coef_grad", "intercept_grad", "_mark", "n_forced", "_targets"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.Wt = self.coef.T
        self.coef_grad = self.intercept_grad = None
        self._targets = None
        self._reset_buffers()


def _touched_counts(store, n_threads, n_out):
    """The ``(n_threads, n_out)`` scratch of ``_active.touched_rows``, kept in the dict ``store``
    under ``"touched_counts"``: zeros when made, and the kernel leaves it zero."""
    counts = store.get("touched_counts")
    if counts is None or counts.shape != (n_threads, n_out):
        counts = store["touched_counts"] = np.zeros((n_threads, n_out), dtype=np.int32)
    return counts


def _active_apply(out, activation):
    """Hidden-layer activation on a dense output (exact path)."""
    if activation == "relu":
        np.maximum(out, 0, out=out)
    elif activation == "logistic":
        out[...] = 1.0 / (1.0 + np.exp(-out))
    elif activation == "tanh":
        np.tanh(out, out=out)
    return out


@register_selector
class SparseInput(Selector):
    """Every neuron computed (exact), with row-sparse weight updates for sparse input batches.

    For the first layer of an extreme-classification network (bag-of-words CSR input): the
    weights keep scikit-learn's ``(n_in, n_out)`` C-ordered layout, so the row of an input
    feature is contiguous and the forward pass touches only the rows of the batch's non-zero
    features; the backward pass computes the gradient of those rows only, and the optimizer
    updates them lazily (per-row Adam counters). With a dense input batch it is the dense
    layer. Training differs from ``"dense"`` only by the laziness of the optimizer (rows of
    absent features, and their Adam moments, are left alone).

    Examples
    --------
    >>> from fastfire import MLPClassifier
    >>> from fastfire.nn.lsh import LSH, SparseInput
    >>> clf = MLPClassifier((128,), selection=[SparseInput(), LSH()])
    """

    name = "sparse_input"

    def make_layer(self, coef, intercept, activation):
        """Build a :class:`SparseInputLayer`."""
        return SparseInputLayer(coef, intercept, activation, self)


class SparseInputLayer(DenseLayer):
    """A :class:`~fastfire.nn.layers.DenseLayer` whose backward pass, for a CSR input batch,
    returns the weight gradient of the batch's features only (a :class:`RowGrad` over the rows
    of ``coef``)."""

    def backward(self, delta, n_threads, need_input_grad=True):
        inputs = self._inputs
        if inputs.is_dense or need_input_grad:
            self.coef_grad = self._dense_coef_grad
            return DenseLayer.backward(self, delta, n_threads, need_input_grad)
        from fastfire._core._dense import column_sums

        n = delta.shape[0]
        nnz = inputs.indices.shape[0]
        m = min(nnz, self.n_in)
        mark = self.__dict__.get("_mark")
        if mark is None or mark.shape[0] != self.n_in:
            mark = self.__dict__["_mark"] = np.full(self.n_in, -1, dtype=np.int32)
        # the batch's distinct features (increasing ids) and their entries, by feature
        rows = np.empty(m, dtype=np.int32)
        slot = np.empty(nnz, dtype=np.int32)
        t_indptr = np.empty(m + 1, dtype=np.int64)
        t_entries = np.empty(nnz, dtype=np.int64)
        t_sample = np.empty(nnz, dtype=np.int32)
        nt = _active.touched_rows(inputs.indptr, inputs.indices, mark, rows, slot, t_indptr,
                                  t_entries, t_sample, None,
                                  _touched_counts(self.__dict__, n_threads, self.n_in), n_threads)
        grad = np.empty((nt, self.n_out), dtype=np.float32)
        delta = np.ascontiguousarray(delta, dtype=np.float32)
        _active.csr_rows_grad(inputs.values, delta, t_indptr, t_entries, t_sample, grad,
                              1.0 / n, n_threads)
        column_sums(delta, self.intercept_grad, 1.0 / n, n_threads)
        self.coef_grad = RowGrad(rows[:nt], grad, "rows")
        return None

    @property
    def _dense_coef_grad(self):
        grad = self.__dict__.get("_dense_grad")
        if grad is None:
            grad = self.__dict__["_dense_grad"] = np.zeros_like(self.coef)
        return grad

    def __init__(self, coef, intercept, activation, selector):
        super().__init__(coef, intercept, activation, selector)
        self.coef_grad = None   # the dense (n_in, n_out) gradient is allocated only if needed

    def __getstate__(self):
        state = DenseLayer.__getstate__(self)
        state.pop("_dense_grad", None)
        state.pop("_mark", None)
        state.pop("touched_counts", None)
        state["coef_grad"] = None
        return state
