import math

import pytest

from sprout.errors import SproutError
from sprout.plugins.mixtures.entropy import EntropyMixture
from sprout.protocols import DomainStats
from sprout.registry import resolve


def stats(**entropies):
    """Domains with hand-chosen entropies: {name: {measure: nats}}."""
    return {name: DomainStats(name=name, tokens=1000, documents=10, entropy=h) for name, h in entropies.items()}


def test_weights_are_softmax_of_conditional_entropy_by_default():
    # exp(ln 2) : exp(ln 6) = 2 : 6, so 0.25 and 0.75.
    domains = stats(
        code={"conditional": math.log(2), "joint": 9.0, "shannon": 9.0},
        text={"conditional": math.log(6), "joint": 1.0, "shannon": 1.0},
    )
    weights = EntropyMixture().weights(0, domains)
    assert weights == pytest.approx({"code": 0.25, "text": 0.75})


@pytest.mark.parametrize("measure", ["joint", "shannon"])
def test_measure_option_picks_the_entropy(measure):
    domains = stats(
        a={measure: math.log(1), "conditional": 5.0},
        b={measure: math.log(3), "conditional": 0.0},
        c={measure: math.log(4), "conditional": 0.0},
    )
    assert EntropyMixture(measure=measure).weights(0, domains) == pytest.approx({"a": 1 / 8, "b": 3 / 8, "c": 4 / 8})


def test_large_entropies_do_not_overflow_and_sum_to_one():
    domains = stats(a={"conditional": 900.0}, b={"conditional": 901.0})
    weights = EntropyMixture().weights(0, domains)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["b"] / weights["a"] == pytest.approx(math.e)


def test_report_and_metrics_show_entropies_and_weights(capsys):
    policy = EntropyMixture()
    policy.weights(0, stats(a={"conditional": 1.0}, b={"conditional": 2.0}))
    assert policy.last_report["b"]["entropy"] == 2.0
    assert policy.last_report["a"]["weight"] == pytest.approx(1 / (1 + math.e))
    assert policy.metrics() == {"entropy/a": 1.0, "entropy/b": 2.0}


def test_missing_entropy_tells_to_reprepare():
    domains = stats(a={"conditional": 1.0}, b={"shannon": 2.0})
    with pytest.raises(SproutError, match=r"'b' has no conditional entropy.*sprout prepare"):
        EntropyMixture().weights(0, domains)


def test_bad_measure_names_the_option():
    with pytest.raises(SproutError, match="measure='bigram'"):
        EntropyMixture(measure="bigram")


def test_registered_under_its_short_name():
    assert resolve("mixture", "entropy") is EntropyMixture
