import subprocess
import sys
from pathlib import Path

import pytest

from sprout import registry
from sprout.errors import SproutError
from sprout.protocols import MixturePolicy, TokenSelector

FIXTURE = Path(__file__).parent / "fixtures" / "sprout_extra"


def test_builtins_are_registered_through_entry_points():
    found = {(p.kind, p.name): p for p in registry.plugins()}
    assert {("selector", "all"), ("mixture", "natural"), ("mixture", "uniform"), ("mixture", "fixed")} <= set(found)
    assert found[("selector", "all")].package == "sprout"
    assert issubclass(registry.resolve("selector", "all"), TokenSelector)
    assert issubclass(registry.resolve("mixture", "sprout.plugins.mixtures.static.Uniform"), MixturePolicy)


def test_unknown_name_lists_available():
    with pytest.raises(SproutError, match=r"Unknown selector plugin 'nope'.*Available: .*all"):
        registry.resolve("selector", "nope")


def test_class_path_of_wrong_kind_is_refused():
    with pytest.raises(SproutError, match="not a selector plugin"):
        registry.resolve("selector", "sprout.plugins.mixtures.static.Uniform")


@pytest.fixture(scope="module")
def extra_package():
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(FIXTURE)], check=True)
    registry.plugins.cache_clear()
    yield
    subprocess.run([*pip, "uninstall", "-y", "sprout-extra"], check=True)
    registry.plugins.cache_clear()


def test_third_party_plugin_is_found_and_broken_one_is_reported(extra_package):
    with pytest.warns(UserWarning, match="sprout-extra"):
        found = {(p.kind, p.name): p for p in registry.plugins()}
    good = found[("selector", "every_other")]
    assert good.package == "sprout-extra" and good.cls is not None
    broken = found[("selector", "broken")]
    assert broken.cls is None and "not-installed-anywhere" in broken.error
    with pytest.raises(SproutError, match=r"'broken' from package 'sprout-extra' failed to load: ImportError"):
        registry.resolve("selector", "broken")
    listing = subprocess.run(
        [sys.executable, "-m", "sprout", "plugins"], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "every_other" in listing and "sprout-extra" in listing
    )  # listed from the metadata; the import error shows only on loading
    checked = subprocess.run(
        [sys.executable, "-m", "sprout", "plugins", "--check"], capture_output=True, text=True, check=True
    ).stdout
    broken_line = next(line for line in checked.splitlines() if " broken " in line)
    assert (
        "sprout-extra" in broken_line
        and "failed to load: ImportError: this plugin needs the package 'not-installed-anywhere'" in broken_line
    )
    assert "all" in checked  # the built-ins still load beside the broken plugin
