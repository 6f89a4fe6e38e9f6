"""The one compiled part of bitsmith: the AVX2 int8 convolution kernel (bitsmith.integer.u8s8).

Everything else is declared in pyproject.toml. The kernel is a plain shared library loaded with
ctypes, not a Python module; it is optional: without a C compiler the install still succeeds and
the engine runs its float32 programs instead (equally exact, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("bitsmith.integer._u8s8_avx2", ["src/bitsmith/integer/u8s8_avx2.c"],
              extra_compile_args=["-O3", "-std=c11", "-Wall"], optional=True),
])
