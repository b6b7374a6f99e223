"""``sprout``: the command.

``sprout fit|validate|test --config recipes/X.yaml`` runs a recipe (``app.lightning_cli``);
``sprout plugins`` lists every registered plugin. The listing reads the installed packages'
metadata and sources (``app.plugin_index``) and imports neither Lightning nor torch, which take
seconds to import, so it answers at once; only the training commands import them.
"""

from __future__ import annotations

import sys

from app import plugin_index


def print_plugins(check: bool = False) -> None:
    """The registered plugins, read without importing them; ``check`` loads each as a run does
    (torch included) and shows which fail, and why."""
    failed = {}
    if check:
        from app import registry  # imports every plugin, hence torch: only when asked to

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
    if argv[:1] == ["plugins"]:
        print_plugins(check="--check" in argv[1:])
        return
    from app.lightning_cli import run  # Lightning and torch: seconds to import, so only for the training commands

    run(args)


if __name__ == "__main__":
    main()
