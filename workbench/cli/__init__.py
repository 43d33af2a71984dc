"""The `wb` command: one module per help panel; each parses, calls the library, renders.

The work lives in the library packages; a command here only turns options into
arguments, calls one entry point and shows its result (cli/render.py).
"""

from __future__ import annotations

import typer

from workbench.cli import browse, collect, curate, evaluate, govern, start, train
from workbench.cli.help_words import plain_help

app = typer.Typer(
    name="wb",
    help="UIR Workbench: curate labeled and unlabeled faces for open-set face recognition.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
for panel in (start, collect, curate, train, evaluate, browse, govern):
    app.add_typer(panel.app)


def main() -> None:
    """The `wb` entry point: the Typer app as a click command with plain help words."""
    plain_help(typer.main.get_command(app))(prog_name="wb")
