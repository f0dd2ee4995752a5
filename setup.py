"""Build the compiled Maglev table populator alongside the pure-Python packages."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nodeagent._maglev",
            sources=["nodeagent/_maglev.c"],
            extra_compile_args=["-O2", "-std=c11"],
        )
    ]
)
