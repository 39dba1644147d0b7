import io
import os
import platform

import numpy as np
import pytest

import fastfire


@pytest.mark.smoke
def test_show_config_names_version_openmp_threads_and_blas():
    buf = io.StringIO()
    fastfire.show_config(file=buf)
    text = buf.getvalue()
    assert f"fastfire {fastfire.__version__}" in text
    assert "OpenMP:" in text and "threads (n_jobs=None):" in text and "BLAS" in text
    config = fastfire.get_config()
    assert config["openmp"] is fastfire.openmp_enabled()


def test_effective_n_threads_resolves_n_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if not fastfire.openmp_enabled():
        assert fastfire.effective_n_threads(None) == fastfire.effective_n_threads(4) == 1
        return
    cores = fastfire.get_config()["usable_cores"]
    assert fastfire.effective_n_threads(None) == cores
    assert fastfire.effective_n_threads(-1) == cores
    assert fastfire.effective_n_threads(3) == 3
    assert fastfire.effective_n_threads(-cores - 5) == 1


def test_effective_n_threads_rejects_bad_values():
    with pytest.raises(ValueError, match="n_jobs"):
        fastfire.effective_n_threads(0)
    with pytest.raises(TypeError, match="n_jobs"):
        fastfire.effective_n_threads(1.5)
    with pytest.raises(TypeError, match="n_jobs"):
        fastfire.effective_n_threads(True)


@pytest.mark.skipif(not fastfire.openmp_enabled(), reason="serial build")
def test_omp_num_threads_is_respected(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", "import fastfire; print(fastfire.effective_n_threads())"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path,  # not the source tree
    )
    assert out.stdout.strip() == "1"


needs_fp_control = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
    reason="flushing subnormals is implemented for x86-64 and AArch64 only")


def _subnormal_products(n_threads):
    """A GEMM split over ``n_threads`` blocks of rows whose every result is 6.4e-39 (subnormal)."""
    from fastfire._core._dense import gemm

    A = np.full((128, 64), 1e-40, dtype=np.float32)
    C = np.empty((128, 64), dtype=np.float32)
    gemm(A, np.ones((64, 64), dtype=np.float32), C, n_threads=n_threads)
    return C


@needs_fp_control
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_flush_denormals_covers_every_thread_and_restores(n_threads):
    from fastfire._core._openmp import denormals_flushed, flush_denormals

    assert not denormals_flushed()
    assert np.all(_subnormal_products(n_threads) > 0)
    with flush_denormals(n_threads):
        assert denormals_flushed()
        assert not np.any(_subnormal_products(n_threads))   # every block, one per thread
    assert not denormals_flushed()
    np.testing.assert_allclose(_subnormal_products(n_threads), np.float32(64e-40), rtol=1e-3)


@needs_fp_control
def test_flush_denormals_restores_after_an_error_and_checks_threads():
    from fastfire._core._openmp import denormals_flushed, flush_denormals, set_denormal_flush

    with pytest.raises(RuntimeError, match="inside"):
        with flush_denormals(2):
            raise RuntimeError("inside")
    assert not denormals_flushed()
    with pytest.raises(ValueError, match="n_threads"):
        set_denormal_flush(True, 0)
    assert not denormals_flushed()
