import io
import os

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
