import subprocess
import sys

import pytest
import yaml

from sprout.commands.plan_growth import format_count, growth_tokens, parse_count, plan_growth
from sprout.errors import SproutError


# Du et al. 2024, growth-timing table: target size, training tokens -> d to the printed precision.
@pytest.mark.parametrize(
    "params, tokens, expected",
    [("7B", "2T", "11.11B"), ("13B", "2T", "15.84B"), ("70B", "2T", "42.48B"), ("8B", "15T", "6.58B")],
)
def test_reproduces_paper_table(params, tokens, expected, capsys):
    d = plan_growth(tokens=tokens, params=params)
    assert format_count(d) == expected
    assert f"d = {expected} tokens" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, value",
    [("7e9", 7e9), ("7000000000", 7e9), ("7B", 7e9), ("7b", 7e9), ("1.1B", 1.1e9), ("500M", 5e8), ("2T", 2e12)],
)
def test_parse_count(text, value):
    assert parse_count(text, "--params") == pytest.approx(value)


@pytest.mark.parametrize("text", ["7X", "-7B", "", "B", "0"])
def test_bad_count_names_the_option(text):
    with pytest.raises(SproutError, match="--tokens"):
        parse_count(text, "--tokens")


def test_small_shape_and_written_stanza(tmp_path, capsys):
    out = tmp_path / "plan" / "growth.yaml"
    d = plan_growth(tokens="2T", params="7B", arch="llama-7b-32l", write_recipe=str(out))
    printed = capsys.readouterr().out
    assert "small shape llama-7b-8l: 8 layers x 4096 wide" in printed
    assert yaml.safe_load(out.read_text()) == {
        "model": {"arch": "llama-7b-8l"},
        "growth": {"operator": {"class_path": "gstack"}, "target_arch": "llama-7b-32l", "at_tokens": round(d)},
    }


def test_params_counted_from_arch_when_not_given(capsys):
    from sprout.model.config import LlamaConfig, param_count

    d = plan_growth(tokens="2T", arch="llama-7b-32l")
    assert d == pytest.approx(growth_tokens(param_count(LlamaConfig.from_name("llama-7b-32l")), 2e12))


def test_factor_must_divide_target_layers():
    with pytest.raises(SproutError, match="22 layers.*factor 4"):
        plan_growth(tokens="2T", params="1.1B", arch="tiny-llama-1.1b")


def test_cli_prints_error_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "sprout", "plan-growth", "--params", "7Q", "--tokens", "2T"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "error: --params '7Q' is not a positive count" in result.stderr
    assert "Traceback" not in result.stderr
