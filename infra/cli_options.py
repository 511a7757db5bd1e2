"""Options shared by the `flashsale` subcommands, wherever they are defined."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC


def state_dir_option() -> Callable[[FC], FC]:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        default=Path(".flashsale"),
        envvar="FLASHSALE_STATE_DIR",
        show_envvar=True,
        show_default=True,
        help="Folder for the embedded stack's data, logs and stack.json.",
    )
