"""Packaging for tmpi: the core needs only numpy and mpi4py; frameworks are extras."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "tmpi_core", "_version.py")) as f:
    exec(f.read(), version)
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="tmpi",
    version=version["__version__"],
    description=("Data-parallel training over MPI (BSP, EASGD, GoSGD) for "
                 "Keras 3 and Theano-family models"),
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["tmpi_core", "tmpi_core.*",
                                    "tmpi_adapters", "tmpi_adapters.*"]),
    install_requires=["numpy", "mpi4py>=4"],
    extras_require={
        # Keras 3; pick its backend yourself (the tests use torch 2.13 CPU).
        "keras": ["keras>=3"],
        # A self-contained MPI (mpiexec included) from PyPI; on clusters use
        # the site MPI instead.
        "mpich": ["mpich"],
        # The bundled default data (scikit-learn's digits).
        "data": ["scikit-learn"],
        # Tests, and executing the notebooks.
        "dev": ["pytest", "scikit-learn", "nbclient", "nbformat", "ipykernel",
                "matplotlib"],
    },
    license="BSD-3-Clause",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
