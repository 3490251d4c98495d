"""Packaging for ganseg. ``pip install -e .[dev]`` installs everything the tests use."""

from pathlib import Path

from setuptools import find_packages, setup

about: dict = {}
exec((Path(__file__).parent / "toolkit" / "__init__.py").read_text(), about)  # only __version__

EXTRAS = {
    # MetaImage / NRRD volumes (PROMISE12, the older course layout).
    "mhd": ["SimpleITK>=2.2"],
    # The standard FID Inception network (weights are a local file, never downloaded).
    "fid": ["pytorch-fid>=0.3"],
    # benchmark --executor ray: cells as Ray tasks on a local or remote cluster.
    "ray": ["ray>=2.9"],
    # The radiomic feature space (Fréchet Radiomic Distance). pyradiomics 3.0.1's setup.py imports numpy
    # without declaring it: `pip install numpy versioneer setuptools wheel && pip install --no-build-isolation
    # pyradiomics==3.0.1` first (docs/metrics.md); 3.1.0's sdist is refused by pip (version mismatch).
    "frd": ["pyradiomics==3.0.1"],
}
# import-linter: the layers contract in pyproject.toml (CI runs lint-imports).
EXTRAS["dev"] = sorted({"pytest>=7", "ruff>=0.4", "import-linter>=2", *EXTRAS["mhd"], *EXTRAS["fid"]})

setup(
    name="ganseg",
    version=about["__version__"],
    description="Train generators of synthetic prostate MR (image, mask) pairs and rank them by segmentation gain",
    long_description=(Path(__file__).parent / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ stays at the top level (the product brief fixes the layout) and is installed beside
    # toolkit/ as data, so a wheel or `pip install .` finds its defaults where a checkout does.
    packages=[*find_packages(include=["toolkit", "toolkit.*", "plugins", "plugins.*"]), "configs"],
    py_modules=["cli"],
    # toolkit/templates/*.py are new-plugin's templates: data read as text, not a package (no __init__.py).
    package_data={"toolkit": ["templates/*.py", "bench/variance_defaults.json"],
                  "configs": ["*.yaml", "profiles/*.yaml", "generators/*.yaml"]},
    install_requires=[
        # The pair that installs on the project's CPU machines without a multi-GB download.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "scipy",
        "nibabel",
        "click>=8",
        "tensorboard",
        "pyyaml",
        "tqdm",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["ganseg=cli:main"]},
)
