"""Plain words in `--help`: TEXT, INTEGER, PATH for values, nothing for flags, NAME in the usage line.

Typer 0.2x labels every value with its Python type (`<str>`, `<bool>` on a flag
that takes no value, `<int range>`) and wraps required arguments in braces in the
usage line (`{path}`). People read click's conventions; `plain_help` sets those
metavars once on the built command tree (a parameter's own metavar is kept).
"""

from __future__ import annotations

from typing import Any

WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "bool": "BOOLEAN",
         "int range": "INTEGER", "float range": "FLOAT", "list[str]": "TEXT", "list[Path]": "PATH",
         "datetime": "DATETIME"}


def _word(param: Any) -> str:
    label = param.display_type(None).strip("<>") if hasattr(param, "display_type") else "text"
    return WORDS.get(label, label.upper() if "|" not in label else f"[{label}]")


def plain_help(command: Any) -> Any:
    """`command` and its subcommands with plain metavars; returns `command`."""
    for param in getattr(command, "params", []):
        if param.metavar is not None:
            continue
        if param.param_type_name == "option":
            param.metavar = "" if getattr(param, "is_flag", False) else _word(param)
        elif param.param_type_name == "argument":
            word = (param.name or "value").upper()
            piece = (word if param.required else f"[{word}]") + ("..." if param.nargs != 1 else "")
            param.metavar = word
            param.get_usage_pieces = lambda ctx, piece=piece: [piece]
            param.display_type_rich = lambda ctx: None  # the name column says it: PATH, NAME
    if hasattr(command, "get_help_option"):  # made per call, outside `params`: a flag like the others
        made = command.get_help_option

        def help_option(ctx: Any, made: Any = made) -> Any:
            option = made(ctx)
            if option is not None and option.metavar is None:
                option.metavar = ""
            return option

        command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)
    return command
