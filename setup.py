"""Installs app/ as the package ``sprout`` and plugins/ as ``sprout.plugins`` (the folders keep
their names in the source tree). The rest of the metadata is in pyproject.toml; only the package
list lives here, since pyproject.toml's package discovery cannot rename folders. tools/ (benchmarks,
experiments, the GPU check) is not installed: it runs from a checkout.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        "sprout",
        *(f"sprout.{p}" for p in find_packages("app")),
        "sprout.plugins",
        *(f"sprout.plugins.{p}" for p in find_packages("plugins")),
    ],
    package_dir={"sprout": "app", "sprout.plugins": "plugins"},
)
