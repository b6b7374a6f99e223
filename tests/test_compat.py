"""sprout.compat: a dependency outside the range a patch was written for stops the run in words."""

from importlib.metadata import version

import pytest

from sprout.compat import require
from sprout.compat.litdata import LITDATA_TESTED, require_litdata
from sprout.errors import SproutError


def test_installed_versions_are_in_the_ranges_the_patches_were_written_for():
    for module in ("torch", "lightning", "jsonargparse", "litdata"):
        __import__(f"sprout.compat.{module}")  # each checks its range when imported
    assert require_litdata("a test") == version("litdata") and LITDATA_TESTED[0] == version("litdata")


def test_another_version_names_package_found_expected_and_why():
    with pytest.raises(SproutError) as error:
        require("torch", "2.15", "2.16", "the patch reads torch's private names")
    found = version("torch")
    assert str(error.value).startswith(
        f"Sprout needs torch >=2.15,<2.16, found {found}: the patch reads torch's private names, "
    )
    assert "pip install 'torch>=2.15,<2.16'" in str(error.value)


def test_a_missing_package_is_found_none():
    with pytest.raises(SproutError, match="needs not-installed-anywhere >=1,<2, found none"):
        require("not-installed-anywhere", "1", "2", "why")
