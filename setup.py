"""Build of the optional native kernels (everything else is in pyproject.toml).

``edgequant._gemv`` (src/edgequant/native/gemv.c): the AVX2 batch-1..8 kernels of Linear4bit and Linear8bitLt.
It is optional: if no C compiler is there the install still succeeds and the layers use their numba paths;
on a CPU without AVX2/FMA the module imports but reports ``has_avx2() == False`` and is not used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "edgequant._gemv",
            sources=["src/edgequant/native/gemv.c"],
            depends=["src/edgequant/native/int8_linear.h", "src/edgequant/native/job.h"],
            # -ffp-contract=off: int8_linear's float steps must round one by one, as torch's ops do
            extra_compile_args=["-O3", "-fno-strict-aliasing", "-ffp-contract=off", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
