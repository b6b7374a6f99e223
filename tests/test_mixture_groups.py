"""`natural` within groups: the README's TinyLlama 7:3 snippet, built by the CLI, gives SlimPajama's
published shares without GitHub, scaled to 0.693584, and code 0.306416."""

import re
from pathlib import Path

import pytest

from sprout.data.datamodule import SproutDataModule
from sprout.errors import SproutError
from sprout.lightning_cli import SproutCLI
from sprout.module import SproutModule
from sprout.plugins.mixtures.static import DomainGroup, Natural
from sprout.protocols import DomainStats

README = Path(__file__).resolve().parents[1] / "README.md"
# SlimPajama-627B's published token shares (%); GitHub's 5.2 is dropped. Code: any count.
SLIMPAJAMA = {"commoncrawl": 52.2, "c4": 26.7, "book": 4.2, "arxiv": 4.6, "wikipedia": 3.8, "stackexchange": 3.3}
STATS = {d: DomainStats(d, int(share * 1e9)) for d, share in {**SLIMPAJAMA, "code": 250.0}.items()}


def test_readme_snippet_gives_tinyllamas_mixture(tiny_data, tmp_path):
    snippet = re.search(r"TinyLlama's 7:3 mixture as a recipe.*?```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "mixture.yaml").write_text(snippet)
    args = ["--data.data_dir", str(tiny_data), "--trainer.logger", "false", "--config", str(tmp_path / "mixture.yaml")]
    mixture = SproutCLI(SproutModule, SproutDataModule, args=args, run=False).datamodule.mixture
    assert isinstance(mixture, Natural)
    weights = mixture.weights(0, STATS)
    want = {
        "commoncrawl": 0.3819,
        "c4": 0.1953,
        "book": 0.0307,
        "arxiv": 0.0337,
        "wikipedia": 0.0278,
        "stackexchange": 0.0241,
        "code": 0.3064,
    }
    assert weights == pytest.approx(want, abs=5e-5)
    assert sum(weights[d] for d in SLIMPAJAMA) == pytest.approx(0.693584, abs=1e-12)


def test_without_groups_natural_is_by_tokens():
    assert Natural().weights(0, STATS)["code"] == pytest.approx(250 / (250 + sum(SLIMPAJAMA.values())))


@pytest.mark.parametrize(
    "groups, message",
    [
        (
            {"a": DomainGroup(1.0, ["commoncrawl", "c4", "poetry"])},
            r"names \['poetry'\], which are not training domains.*leaves training domains \['arxiv'",
        ),
        (
            {"a": DomainGroup(1.0, list(STATS)[:3]), "b": DomainGroup(1.0, list(STATS)[2:])},
            "'book' is in both groups 'a' and 'b'",
        ),
        ({"a": DomainGroup(0.0, list(STATS))}, r"group 'a' needs a positive total.*groups.a"),
    ],
)
def test_bad_groups_name_the_culprit(groups, message):
    with pytest.raises(SproutError, match=message):
        Natural(groups).weights(0, STATS)
