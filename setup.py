"""Builds the one extension, fastactor._core, from src/fastactor/_core.pyx and csrc/*.c.

Switches (environment):
  FASTACTOR_DEBUG=1     -O0 -g, C asserts on, -Werror, Cython line tracing off
  FASTACTOR_SANITIZE=1  ASan + UBSan (run Python with libasan preloaded; see Makefile)
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTACTOR_DEBUG") == "1"
SANITIZE = os.environ.get("FASTACTOR_SANITIZE") == "1"

cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
ldflags = ["-pthread"]
macros = []
if DEBUG or SANITIZE:
    cflags += ["-O0", "-g3", "-UNDEBUG"]
else:
    cflags += ["-O2"]
    macros.append(("NDEBUG", "1"))
if SANITIZE:
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    cflags += san
    ldflags += san

sources = ["src/fastactor/_core.pyx"] + sorted(glob.glob("csrc/*.c"))
core = Extension(
    "fastactor._core",
    sources=sources,
    include_dirs=["csrc"],
    define_macros=macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
    depends=sorted(glob.glob("csrc/*.h") + glob.glob("src/fastactor/core/*.pyx")
                   + glob.glob("src/fastactor/includes/*.pxd")),
)

# -Werror applies to our C only: Cython's generated code is not ours to warn about.
if DEBUG:
    from setuptools.command.build_ext import build_ext

    class StrictBuildExt(build_ext):
        def build_extension(self, ext):
            compile_ = self.compiler._compile

            def strict(obj, src, ext_, cc_args, extra_postargs, pp_opts):
                extra = list(extra_postargs)
                if src.startswith("csrc") or "/csrc/" in src:
                    extra.append("-Werror")
                return compile_(obj, src, ext_, cc_args, extra, pp_opts)

            self.compiler._compile = strict
            return super().build_extension(ext)

    cmdclass = {"build_ext": StrictBuildExt}
else:
    cmdclass = {}

setup(
    ext_modules=cythonize([core], compiler_directives={"language_level": "3"},
                          annotate=False, quiet=True),
    cmdclass=cmdclass,
)
