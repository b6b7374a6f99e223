"""Plugin short names work wherever a class path does: in recipes and on the command line.

``sprout.plugin_names`` puts the registry into jsonargparse's class-path resolution; these run the
real ``sprout fit --print_config`` and read back the class each form resolved to.
"""

from pathlib import Path

import pytest
import yaml

from sprout.cli import main

ROOT = Path(__file__).resolve().parents[1]
GSTACK = str(ROOT / "recipes" / "gstack-tiny.yaml")  # a recipe with no selector section
RHO1, ENTROPY, GSTACK_OP = (
    "sprout.plugins.selectors.rho1.Rho1",
    "sprout.plugins.mixtures.entropy.EntropyMixture",
    "sprout.plugins.growth.direct.Gstack",
)


def resolved(capsys, *args: str) -> dict:
    """The full configuration ``sprout fit`` would run with."""
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", GSTACK, *args, "--print_config"])
    assert exit.value.code in (None, 0), capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(
    "args, key, class_path, init_args",
    [
        (["--model.selector", "rho1"], "model.selector", RHO1, {"k": 60.0}),
        (["--model.selector.class_path", "rho1"], "model.selector", RHO1, {"k": 60.0}),
        (["--model.selector", "rho1", "--model.selector.init_args.k", "70"], "model.selector", RHO1, {"k": 70.0}),
        (
            ["--model.selector.class_path", "rho1", "--model.selector.init_args.k", "70"],
            "model.selector",
            RHO1,
            {"k": 70.0},
        ),
        (["--model.selector", "{class_path: rho1, init_args: {k: 30}}"], "model.selector", RHO1, {"k": 30.0}),
        (
            ["--model.selector", "Rho1"],
            "model.selector",
            RHO1,
            {},
        ),  # jsonargparse's own class-name resolution still works
        (["--data.mixture", "entropy"], "data.mixture", ENTROPY, {"measure": "conditional"}),
        (["--data.mixture.class_path", "entropy"], "data.mixture", ENTROPY, {}),
        (["--growth.operator", "gstack"], "growth.operator", GSTACK_OP, {}),
    ],
)
def test_command_line_short_names(capsys, args, key, class_path, init_args):
    section, name = key.split(".")
    value = resolved(capsys, *args)[section][name]
    assert value["class_path"] == class_path
    assert init_args.items() <= value.get("init_args", {}).items()


def test_recipe_short_names(capsys, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "model:\n  selector: {class_path: rho1, init_args: {k: 70}}\ndata:\n  mixture: entropy\ngrowth:\n  operator: zero_depth\n"
    )
    config = resolved(capsys, "--config", str(extra))
    assert config["model"]["selector"]["class_path"] == RHO1 and config["model"]["selector"]["init_args"]["k"] == 70.0
    assert config["data"]["mixture"]["class_path"] == ENTROPY
    assert config["growth"]["operator"]["class_path"] == "sprout.plugins.growth.zero.ZeroDepth"


@pytest.mark.parametrize(
    "args, where, kind, names",
    [
        (
            ["--model.selector", "rho2"],
            "model.selector in the command line",
            "selector",
            "all, loss_topk, random, rho1",
        ),
        (
            ["--model.selector.class_path", "rho2"],
            "model.selector in the command line",
            "selector",
            "all, loss_topk, random, rho1",
        ),
        (
            ["--data.mixture", "entropi"],
            "data.mixture in the command line",
            "mixture",
            "bimix, doremi, entropy, fixed, natural, uniform",
        ),
        (
            ["--growth.operator", "stack"],
            "growth.operator in the command line",
            "growth",
            "direct_width, gstack, learn, random_depth",
        ),
    ],
)
def test_unknown_short_name_lists_the_registered_ones(capsys, args, where, kind, names):
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", GSTACK, *args, "--print_config"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"sprout: error: {where}: Unknown {kind} plugin '{args[-1]}'. Available: ") and names in err
    ), err
    assert "Traceback" not in err


def test_short_name_of_another_kind_is_refused(capsys):
    """A growth operator's name where a selector is expected is unknown as a selector."""
    with pytest.raises(SystemExit):
        main(["fit", "--config", GSTACK, "--model.selector", "gstack", "--print_config"])
    assert "Unknown selector plugin 'gstack'" in capsys.readouterr().err


def test_help_for_a_short_name(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.selector.help", "rho1"])
    out = capsys.readouterr().out
    assert f"Help for --model.selector.help={RHO1}" in out and "--model.selector.k K" in out


# (the old names are written in two pieces so that rename26.sh, run again, leaves them old)
@pytest.mark.parametrize(
    "old, new",
    [
        ("plugins" + ".selectors.rho1.Rho1", "sprout.plugins.selectors.rho1.Rho1"),
        ("app" + ".model.config.LlamaConfig", "sprout.model.config.LlamaConfig"),
        ("sprout.model.config.LlamaConfig", "sprout.model.config.LlamaConfig"),
    ],
)
def test_class_paths_from_before_the_rename_resolve_with_a_warning(old, new, recwarn):
    from sprout.plugin_names import current_path

    assert current_path(old) == new
    said = [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)]
    assert said == (
        []
        if old == new
        else [f"class_path {old} is now {new}: write that in the recipe (Sprout's modules are the package `sprout`)."]
    )


def test_recipe_with_a_class_path_from_before_the_rename(capsys, tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  selector:\n    class_path: " + "plugins" + ".selectors.rho1.Rho1\n")
    with pytest.warns(FutureWarning, match="is now sprout.plugins.selectors.rho1.Rho1"):
        config = resolved(capsys, "--config", str(recipe))
    assert config["model"]["selector"]["class_path"] == RHO1
