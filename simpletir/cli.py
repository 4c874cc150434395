"""The ``simpletir`` and ``simpletir-run`` commands.

Errors the user can fix (:class:`~simpletir.core.errors.SimpletirError`) print one line and
exit 2; anything else is a bug and keeps its traceback. Heavy modules (engines, sandbox,
rewards) are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simpletir import __version__
from simpletir.core.errors import SimpletirError, StageUnavailableError

if TYPE_CHECKING:  # the plugin machinery is imported only by the subcommands that need it
    from simpletir.core.plugins import SimpletirPluginManager

EXIT_USER_ERROR = 2

_CONFIG_HELP = (
    "a YAML file, or a config name from configs/ (quickstart_cpu, simpletir_trainer, "
    "single_turn_math, eval); default: $CONFIG_NAME or quickstart_cpu"
)
_OVERRIDES_HELP = (
    "config overrides, as key=value (rollout.n=4, plugin_config.python.timeout_s=3) or in the "
    "seed's style (--val_only True --max_turns 10); later ones win"
)
_BLOCK_HELP = (
    "skip the plugin with this entry-point name, or one component as KIND:NAME "
    "(benchmark:aime24) (repeatable, or comma-separated; also $SIMPLETIR_BLOCK_PLUGINS)"
)

_EPILOG = """\
examples:
  simpletir-run quickstart_cpu                        # the CPU quickstart (val_only on aime24)
  simpletir-run simpletir_trainer --val_only True --valid_dataset deepscaler/aime --n_val 32
  simpletir config show single_turn_math --tool_use False
  simpletir plugins --json
  RESUME=True simpletir-run configs/simpletir_trainer.yaml experiment_name=my_run

environment: SIMPLETIR_DATA_DIR (datasets), SIMPLETIR_BLOCK_PLUGINS, CONFIG_NAME, RESUME=True
"""

# Subcommands owned by other modules, imported only when used: name -> (module, help).
_DELEGATED = {
    "sandbox": ("simpletir.plugins.tools.python_sandbox.cli", "run, check and benchmark the Python sandbox"),
    "score": ("simpletir.plugins.rewards.cli", "score responses against ground truths with a reward"),
    "export": ("simpletir.core.trainer.export", "write a training checkpoint as a Hugging Face model folder"),
    "view": ("simpletir.viewer.view", "write a run's trajectories as one offline HTML page"),
    "plot": ("simpletir.viewer.plot", "plot the training curves of runs, overlaid, into a PNG"),
    "replay": ("simpletir.core.trainer.replay", "re-run recorded training steps' updates and compare"),
}


def _split_block(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pull ``--block NAME`` / ``--block=NAME`` out of argv wherever it appears.

    Done by hand because run overrides (``--max_turns 10``) must reach the config loader
    untouched, which argparse's REMAINDER would not allow for a flag placed after them.
    """
    rest: list[str] = []
    blocked: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--block":
            if i + 1 >= len(argv):
                raise SimpletirError("--block needs a plugin name")
            blocked.extend(argv[i + 1].split(","))
            i += 2
            continue
        if arg.startswith("--block="):
            blocked.extend(arg.split("=", 1)[1].split(","))
        else:
            rest.append(arg)
        i += 1
    return rest, [name.strip() for name in blocked if name.strip()]


def _split_config(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The first argument is the config unless it already looks like an override."""
    if args and not args[0].startswith("-") and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def _make_pm(block: Sequence[str], *, collect_failures: bool = False) -> SimpletirPluginManager:
    """The plugin manager. A block naming nothing is an error of the config check (runs,
    ``config show``); ``collect_failures`` (``simpletir plugins``) collects load failures instead."""
    from simpletir.core.plugins import make_plugin_manager

    return make_plugin_manager(block=block, on_load_error="collect" if collect_failures else "raise")


# -- subcommands ------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace, block: list[str]) -> int:
    from simpletir.core.config_load import load_config, resolve_config_path
    from simpletir.core.lifecycle import process_lifecycle
    from simpletir.core.run import run_experiment

    # SIGTERM/SIGINT stop the run through its cleanup; a reaper stops its children if it is
    # killed outright (docs/architecture.md, "Process lifecycle").
    with process_lifecycle():
        verbose = "--verbose" in args.args
        as_json = "--json" in args.args
        config_arg, overrides = _split_config([a for a in args.args if a not in ("--verbose", "--json")])
        config = load_config(resolve_config_path(config_arg), overrides)
        pm = _make_pm(block)
        result = run_experiment(config, pm, verbose=verbose)
    if as_json:  # for scripts: the whole result on stdout
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:  # for people: the tables and file lists were printed already; say where the result is
        run_dir = result.get("run_dir")
        print(f"result: {Path(run_dir) / 'result.json'}" if run_dir else "done")
    return 0


def _cmd_config_show(args: argparse.Namespace, block: list[str]) -> int:
    from simpletir.core.config_load import load_config, resolve_config_path, to_yaml, validate_config

    if args.help_fields:
        from simpletir.core.config_docs import fields_text, plugin_fields_text
        from simpletir.core.plugins import print_warning

        pm = _make_pm(block, collect_failures=True)
        for failure in pm.load_failures:
            print_warning(failure.message())
        print(fields_text())
        print(plugin_fields_text(pm.registry()))
        return 0
    config_arg, overrides = _split_config(args.args)
    config = load_config(resolve_config_path(config_arg), overrides)
    if args.check != "none":
        # the chosen components' options come back resolved, defaults included
        config = validate_config(config, _make_pm(block), check_data=args.check == "all")
    sys.stdout.write(to_yaml(config))
    return 0


def _cmd_plugins(args: argparse.Namespace, block: list[str]) -> int:
    from simpletir.core.plugins import print_warning

    pm = _make_pm(block, collect_failures=True)
    registry = pm.registry()
    # Warnings here, errors in a run: a contested name only stops a config that chooses it,
    # a block naming nothing stops runs (it would silently block nothing).
    problems = [failure.message() for failure in pm.load_failures] + registry.problems + pm.block_problems()
    for problem in problems:
        print_warning(problem)
    components = [
        {
            "name": entry.spec.name,
            "kind": entry.spec.kind,
            "plugin": entry.plugin,
            "distribution": entry.distribution,
            "version": entry.version,
            "description": entry.spec.description,
            **({"aliases": list(entry.spec.aliases)} if hasattr(entry.spec, "aliases") else {}),
        }
        for entry in registry.all()
    ]
    plugins = [dataclasses.asdict(info) for info in pm.plugin_infos()]
    if args.json:
        payload = {
            "components": components,
            "plugins": plugins,
            "load_failures": [dataclasses.asdict(f) for f in pm.load_failures],
            "problems": registry.problems + pm.block_problems(),
            "blocked": list(pm.blocked_names),
        }
        print(json.dumps(payload, indent=2, default=list))
        return 0
    print(_table(["kind", "name", "distribution", "version", "description"], components))
    print()
    print(
        _table(
            ["name", "distribution", "version", "hooks"],
            [{**p, "hooks": ", ".join(p["hooks"])} for p in plugins],
        )
    )
    if pm.blocked_names:
        print(f"\nblocked: {', '.join(pm.blocked_names)}")
    return 0


def _table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for row in rows]
    return "\n".join(lines)


def _delegate(module_name: str, subcommand: str) -> Callable[[list[str]], int]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        raise StageUnavailableError(
            f"'simpletir {subcommand}' is not available yet in this installation "
            f"({module_name} does not exist)"
        ) from exc
    main: Callable[[list[str]], int] = module.main
    return main


# -- entry points -----------------------------------------------------------------------------


def _wants_help(args: Sequence[str]) -> bool:
    return bool(args) and args[0] in ("-h", "--help")


def _parse_own_options(parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
    """Parse the options ``parser`` declares, wherever they appear in ``args``; the rest, in
    order, is ``namespace.args`` (CONFIG and overrides).

    ``config show`` takes free-form overrides (``--max_turns 10``) that argparse would reject or
    swallow, so its own options are picked out by what its parser declares (nothing is
    declared twice) and parsed by that parser, errors and defaults included.
    """
    takes_value = {
        flag: action.nargs != 0
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
    }
    own: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag = arg.split("=", 1)[0]
        if flag in takes_value:
            own.append(arg)
            if takes_value[flag] and "=" not in arg and i + 1 < len(args):
                i += 1
                own.append(args[i])
        else:
            rest.append(arg)
        i += 1
    try:
        namespace = parser.parse_args(own)
    except argparse.ArgumentError as exc:  # the parser is built with exit_on_error=False
        raise SimpletirError(f"{parser.prog}: {exc}") from exc
    namespace.args = rest
    return namespace


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that keeps its subcommand parsers by name (for their help texts)."""

    subcommands: dict[str, argparse.ArgumentParser]


def build_parser() -> _Parser:
    parser = _Parser(
        prog="simpletir",
        description="simpletir: RL for language models that reason with tools over many turns.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"simpletir {__version__}")
    parser.add_argument("--block", metavar="NAME", action="append", help=_BLOCK_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run an experiment (evaluation with val_only=True, else training)",
        description="Load CONFIG, apply overrides, check every name and file, then run. "
        "The run directory runs/<experiment_name> gets the resolved config and plugin versions.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="also show vLLM's own log messages on the console (they always go to the run log)",
    )
    run.add_argument("--json", action="store_true", help="print the run's whole result as JSON on stdout")
    run.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="[CONFIG] [OVERRIDES...]",
        help=f"{_CONFIG_HELP}; {_OVERRIDES_HELP}",
    )

    plugins = sub.add_parser("plugins", help="list installed plugins and the components they provide")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    config = sub.add_parser("config", help="inspect experiment configs")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = config_sub.add_parser(
        "show",
        help="print the fully resolved config as YAML",
        description="Print CONFIG with overrides applied and every default filled in (the chosen "
        "components' options included), after checking it.",
        exit_on_error=False,  # bad options are one-line errors (exit 2), see _parse_own_options
    )
    show.add_argument(
        "--check",
        choices=["all", "plugins", "none"],
        default="all",
        help="what to check besides keys and types: plugin names and options, and dataset files (all)",
    )
    show.add_argument(
        "--help-fields",
        action="store_true",
        help="list every config key, and every installed component's options, with type, default and help",
    )
    show.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="[CONFIG] [OVERRIDES...]",
        help=f"{_CONFIG_HELP}; {_OVERRIDES_HELP}",
    )

    for name, (_module, help_text) in _DELEGATED.items():
        delegated = sub.add_parser(name, help=help_text, add_help=False)
        delegated.add_argument("args", nargs=argparse.REMAINDER)
    parser.subcommands = {"run": run, "plugins": plugins, "config": config, "show": show}
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Delegated subcommands get their argv untouched (their own --help included).
        if argv and argv[0] in _DELEGATED:
            return int(_delegate(_DELEGATED[argv[0]][0], argv[0])(argv[1:]) or 0)
        rest, block = _split_block(argv)
        parser = build_parser()
        # run / config show take free-form overrides (--max_turns 10) that argparse would
        # reject as unknown flags, so only their own options are parsed here.
        if rest[:1] == ["run"] and not _wants_help(rest[1:]):
            return _cmd_run(argparse.Namespace(args=rest[1:]), block)
        if rest[:2] == ["config", "show"] and not _wants_help(rest[2:]):
            return _cmd_config_show(_parse_own_options(parser.subcommands["show"], rest[2:]), block)
        args = parser.parse_args(rest)
        if args.command == "plugins":
            return _cmd_plugins(args, block)
        # A bare 'simpletir' or 'simpletir config': show what there is to choose from.
        (parser.subcommands["config"] if args.command == "config" else parser).print_help(sys.stderr)
        return EXIT_USER_ERROR
    except SimpletirError as exc:
        print(f"simpletir: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        from simpletir.core.run_dir import FILESYSTEM_ERRNOS, describe_os_error

        if exc.errno not in FILESYSTEM_ERRNOS:
            raise  # not the file system's refusal: a bug, keep its traceback
        # A run/log/checkpoint write refused (read-only, not a folder, disk full...): one line.
        # Everything written before is complete (atomic writes, fsynced journals): RESUME=True
        # continues once the cause is fixed.
        print(f"simpletir: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (lifecycle.Terminated)
        from simpletir.core.lifecycle import exit_status

        code, line = exit_status(exc)
        print(f"simpletir: {line}", file=sys.stderr)
        return code


def run_main(argv: Sequence[str] | None = None) -> int:
    """``simpletir-run CONFIG [overrides]``: the same as ``simpletir run``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        return main(["run", "--help"])
    return main(["run", *argv])
