"""``sprout``: the command.

``sprout fit|validate|test --config recipes/X.yaml`` runs a recipe (``sprout.lightning_cli``);
``sprout prepare``, ``sprout export``, ... run one function each (``sprout.commands``);
``sprout plugins`` lists every registered plugin. ``sprout --help`` and the plugin listing read
tables and the installed packages' metadata and sources (``sprout.plugin_index``) and import neither
Lightning nor torch, which take seconds to import, so they answer at once; a command imports
what it needs when it runs.
"""

from __future__ import annotations

import sys

from sprout import commands, plugin_index

TRAINING = {
    "fit": "train a recipe's model on its data (Lightning's Trainer; resumes a run)",
    "validate": "validation loss of a recipe's model on its validation data",
    "test": "test loss of a recipe's model on its test data",
}
PLUGINS = "list the registered plugins (selectors, mixtures, growth operators); --check loads each"


def usage() -> str:
    """``sprout --help``: every command with its purpose."""
    rows = [*TRAINING.items(), *((name, c.purpose) for name, c in commands.COMMANDS.items()), ("plugins", PLUGINS)]
    width = max(len(name) for name, _ in rows)
    lines = [
        "usage: sprout COMMAND [--config FILE] [--print_config] [options]",
        "",
        "Every command takes --config FILE (YAML of its options) and --print_config; `sprout COMMAND --help` lists its options.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {purpose}" for name, purpose in rows]
    return "\n".join(lines)


def print_plugins(check: bool = False) -> None:
    """The registered plugins, read without importing them; ``check`` loads each as a run does
    (torch included) and shows which fail, and why."""
    failed = {}
    if check:
        from sprout import registry  # imports every plugin, hence torch: only when asked to

        failed = {(p.kind, p.name): p.error for p in registry.plugins() if p.error}
    rows = []
    for p in plugin_index.listed():
        problem = failed.get((p.kind, p.name)) or p.problem
        rows.append((p.kind, p.name, p.package, f"failed to load: {problem}" if problem else p.description))
    print(plugin_index.table(rows))
    if not check:
        print(
            "\n(read from the installed packages without importing them; `sprout plugins --check` also loads each one)"
        )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] in ([], ["-h"], ["--help"]):
        print(usage())
        return
    if argv[:1] == ["plugins"]:
        print_plugins(check="--check" in argv[1:])
        return
    if argv[0] in commands.COMMANDS:
        commands.run(argv[0], argv[1:])
        return
    with commands.user_errors("sprout"):  # a dependency of the wrong version says so in words (sprout.compat)
        from sprout.lightning_cli import (
            run,  # Lightning and torch: seconds to import, so only for the training commands
        )

    run(args)


if __name__ == "__main__":
    main()
