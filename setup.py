"""Packaging for tmpi: the core needs only numpy and mpi4py; frameworks are extras."""

import os
import sysconfig

from setuptools import find_packages, setup
from setuptools.dist import Distribution

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "tmpi_core", "_version.py")) as f:
    exec(f.read(), version)
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

# site-packages relative to the install prefix: where the .pth file goes.
_paths = sysconfig.get_paths()
SITE = os.path.relpath(_paths["purelib"], _paths["data"])


class _Distribution(Distribution):
    """Lets ``pip install -e`` install ``data_files`` (the .pth) too: its
    editable build asks ``has_data()``, which setuptools does not define."""

    def has_data(self):
        return self.has_data_files()


setup(
    name="tmpi",
    distclass=_Distribution,
    version=version["__version__"],
    description=("Data-parallel training over MPI (BSP, EASGD, GoSGD) for "
                 "Keras 3 and Theano-family models"),
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["tmpi_core", "tmpi_core.*",
                                    "tmpi_adapters", "tmpi_adapters.*",
                                    "tmpi_layers", "tmpi_layers.*"]),
    install_requires=["numpy", "mpi4py>=4"],
    # Sets Theano's BLAS flags and Lasagne 0.1's downsample alias at
    # interpreter start, before a user's `import theano`; a no-op without
    # Theano (see tmpi_adapters/_theano_env.py).
    data_files=[(SITE, ["tmpi_theano_env.pth"])],
    extras_require={
        # Keras 3; pick its backend yourself (the tests use torch 2.13 CPU).
        "keras": ["keras>=3"],
        # A self-contained MPI (mpiexec included) from PyPI; on clusters use
        # the site MPI instead.
        "mpich": ["mpich"],
        # The bundled default data (scikit-learn's digits).
        "data": ["scikit-learn"],
        # `tmpi-report RUN_DIR`: plots of recorded runs.
        "report": ["matplotlib"],
        # Tests, and executing the notebooks.
        # Theano 1.0.5 + Lasagne 0.1 on Python 3.11: numpy < 1.24 (np.complex),
        # setuptools < 81 (Lasagne imports pkg_resources), a real BLAS with
        # standard symbols from PyPI (scipy-openblas32).
        "theano": ["theano==1.0.5", "Lasagne==0.1", "numpy<1.24", "scipy<1.16",
                   "scipy-openblas32", "setuptools>=77.0.3,<81"],
        "theano-dev": ["pytest", "scikit-learn<1.6", "matplotlib<3.10"],
        "pytensor": ["pytensor"],
        "dev": ["pytest", "scikit-learn", "nbclient", "nbformat", "ipykernel",
                "matplotlib"],
    },
    entry_points={
        # Plots of runs recorded with record=RUN_DIR (needs the report
        # extra); mpiexec with threads and a GPU per rank.
        "console_scripts": ["tmpi-report=tmpi_core.report:main",
                            "tmpi-run=tmpi_core.launch:main"],
    },
    license="BSD-3-Clause",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
