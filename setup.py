"""Build fastfire's Cython extensions, with OpenMP where the compiler supports it.

OpenMP is probed by compiling, linking *and running* a small program with the
compiler setuptools will use. When that fails the extensions are built serial
(every ``prange`` becomes a plain loop) and a loud warning says so.

Environment variables
---------------------
FASTFIRE_NO_OPENMP=1     build serial even where OpenMP works.
FASTFIRE_DEBUG_CYTHON=1  turn bounds, wraparound and initialisation checks on (hunting a crash).
FASTFIRE_NATIVE=1        add ``-march=native`` (faster, not portable: never for wheels you share).
FASTFIRE_EXTENSIONS=a,b  development only: build just these modules of fastfire/_core
                         (e.g. ``_dense,_loss`` with ``python setup.py build_ext --inplace``).
"""

import glob
import os
import subprocess
import sys
import tempfile
import textwrap

from setuptools import Extension, setup

OPENMP_TEST_PROGRAM = textwrap.dedent(
    r"""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\n", n);
        return n > 0 ? 0 : 1;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or None when it does not work here."""
    if sys.platform == "win32":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]

    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    for compile_args, link_args in candidates:
        compiler = new_compiler()
        customize_compiler(compiler)
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "test_openmp.c")
            with open(source, "w") as f:
                f.write(OPENMP_TEST_PROGRAM)
            try:
                objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
                exe = os.path.join(tmp, "test_openmp")
                compiler.link_executable(objects, exe, extra_postargs=link_args)
                out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
            except Exception:  # any compiler or linker failure means: no OpenMP
                continue
            if out.returncode == 0 and out.stdout.strip().isdigit():
                return compile_args, link_args
    return None


def _extensions():
    compile_args = ["-O3"] if sys.platform != "win32" else ["/O2"]
    link_args = []
    if _env_flag("FASTFIRE_NATIVE"):
        compile_args.append("-march=native")

    openmp = None
    if _env_flag("FASTFIRE_NO_OPENMP"):
        print("fastfire: FASTFIRE_NO_OPENMP is set, building without OpenMP (serial kernels).")
    else:
        openmp = _openmp_flags()
        if openmp is None:
            banner = "*" * 78
            print(
                f"\n{banner}\nfastfire WARNING: this compiler could not build and run an OpenMP "
                f"program.\nfastfire is being built WITHOUT OpenMP: every kernel will run on one "
                f"thread.\nInstall an OpenMP runtime (e.g. libgomp / libomp) and reinstall to "
                f"get parallel kernels.\n{banner}\n",
                file=sys.stderr,
            )
    if openmp is not None:
        compile_args += openmp[0]
        link_args += openmp[1]

    only = {name.strip() for name in os.environ.get("FASTFIRE_EXTENSIONS", "").split(",") if name.strip()}
    extensions = []
    for path in sorted(glob.glob(os.path.join("fastfire", "_core", "*.pyx"))):
        module = os.path.splitext(path)[0].replace(os.sep, ".")
        if only and module.rsplit(".", 1)[1] not in only:
            continue
        extensions.append(
            Extension(
                module,
                [path],
                extra_compile_args=compile_args,
                extra_link_args=link_args,
            )
        )

    from Cython.Build import cythonize

    debug = _env_flag("FASTFIRE_DEBUG_CYTHON")
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "nonecheck": False,
        "cdivision": True,
        "embedsignature": True,
    }
    return cythonize(
        extensions,
        compiler_directives=directives,
        nthreads=os.cpu_count() or 1,
    )


setup(ext_modules=_extensions())
