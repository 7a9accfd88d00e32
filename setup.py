"""Packaging for napari-dgc (setuptools)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="napari-dgc",
    version="0.1.0",
    description=(
        "Unsupervised segmentation of hyperspectral images by Deep Global Clustering, "
        "as a napari plugin and a command-line tool"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["napari_dgc", "napari_dgc.*"]),
    include_package_data=True,
    package_data={"napari_dgc": ["napari.yaml", "resources/*", "resources/**/*"]},
    install_requires=[
        # torch>=2.1 is satisfied by an already installed CPU build; see README for GPU installs.
        "torch>=2.1",
        "numpy>=1.24",
        "napari>=0.5",
        "magicgui>=0.8",
        "qtpy>=2.0",
        "spectral>=0.23",
        "scikit-image>=0.21",
        "scipy>=1.10",
        "h5py>=3.8",
        "tifffile>=2023.1.1",
        "Pillow>=9.0",
        "safetensors>=0.4",
        # live plots of the panels (loss curves, timeline figures, spectra)
        "pyqtgraph>=0.13",
        # evented models of the GUI state (napari_dgc/state)
        "psygnal>=0.9",
        "npe2>=0.7",
        # compiled CPU kernels for segmentation (napari_dgc/_cpu_kernels.py)
        "numba>=0.59",
    ],
    extras_require={
        "pyqt5": ["PyQt5>=5.15"],
        "all": ["PyQt5>=5.15"],
        "testing": [
            "pytest>=7",
            "pytest-qt>=4.2",
            "pytest-xvfb>=3.0",
            "scikit-learn>=1.3",
            "hypothesis>=6",
            "import-linter>=2.1",
            "ruff>=0.6",
        ],
    },
    entry_points={
        "console_scripts": ["napari-dgc=napari_dgc.cli:main"],
        "napari.manifest": ["napari-dgc=napari_dgc:napari.yaml"],
    },
    classifiers=[
        "Framework :: napari",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
