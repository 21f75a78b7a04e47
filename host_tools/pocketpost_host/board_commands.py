"""The commands for real boards: `boards`, `build`, `flash`, `deploy` (thin click commands over
boards.py, build.py, flash.py and deploy.py)."""

import json
import sys
from pathlib import Path

import click

from . import boards, build, deploy, flash


class BoardName(click.ParamType):
    """The name of a board definition (boards/NAME/board.json)."""

    name = "board"

    def convert(self, value, param, ctx):
        known = boards.names()
        if value not in known:
            self.fail(f"{value} is not a board; boards: {', '.join(known)}", param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in boards.names() if n.startswith(incomplete)]


def _config_options(ctx, param, values):
    config = {}
    for text in values:
        try:
            key, value = build.parse_config_option(text)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx, param) from None
        config[key] = value
    return config


BOARD = click.option("--board", "board", type=BoardName(), required=True, envvar="POCKETPOST_BOARD",
                     show_envvar=True, help="The board definition (pocketpost boards lists them).")
FIRMWARE = click.option("--firmware", "base_firmware", type=click.Path(dir_okay=False, path_type=Path),
                        help="The MicroPython firmware .bin the board definition names (micropython.org).")


@click.command("boards")
@click.option("--json", "as_json", is_flag=True, help="Print the definitions as JSON.")
def boards_command(as_json):
    """List the board definitions."""
    loaded = [boards.load(name) for name in boards.names()]
    if as_json:
        click.echo(json.dumps({b.name: b.definition for b in loaded}, indent=2, sort_keys=True))
        return
    for b in loaded:
        click.echo(f"{b.name:18} {b.definition.get('description', '')}")


@click.command("build")
@BOARD
@FIRMWARE
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [default: build/BOARD].")
@click.option("--config", "config", multiple=True, metavar="KEY=VALUE", callback=_config_options,
              help="A setting for the image's config.json (repeatable; secrets end up in the image).")
@click.option("--frozen", is_flag=True, help="Leave the app out of the filesystem: a firmware built with "
              "the written manifest.py has it frozen in.")
def build_command(board, base_firmware, out, config, frozen):
    """Build the flash images of a board: a LittleFS image of the filesystem partition, merged with
    the base MicroPython firmware when --firmware is given, and a manifest.py for frozen builds."""
    result = build.build(board, out=out, base_firmware=base_firmware, config=config, frozen=frozen)
    for line in build.describe(result):
        click.echo(line)


class _Progress:
    """esptool's write progress as one line that redraws itself on a terminal."""

    def __init__(self):
        self.shown = -1

    def __call__(self, done, total):
        percent = 100 * done // max(total, 1)
        if percent == self.shown:
            return
        self.shown = percent
        bar = "#" * (percent // 4)
        end = "\n" if done >= total else ""
        if sys.stderr.isatty():
            click.echo(f"\rwriting [{bar:25}] {percent:3}%", err=True, nl=bool(end))
        elif end or percent % 25 == 0:
            click.echo(f"writing {percent}%", err=True)


@click.command("flash")
@BOARD
@click.option("-p", "--port", envvar="POCKETPOST_PORT", metavar="PORT",
              help="The board's serial port (default: the one whose USB ids the board definition lists).")
@FIRMWARE
@click.option("--erase", is_flag=True, help="Erase the whole flash first (needs --firmware).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Build folder [default: build/BOARD].")
@click.pass_context
def flash_command(ctx, board, port, base_firmware, erase, out):
    """Build the board's image and write it with esptool; then wait for the firmware to answer and
    say what still needs provisioning."""
    port = port or (ctx.find_root().obj.port if ctx.find_root().obj else None)
    result = flash.flash(board, port=port, base_firmware=base_firmware, erase=erase, out=out,
                         emit=lambda line: click.echo(line, err=True), progress=_Progress())
    info = result.info or {}
    click.echo(f"pocketpost {result.hello.get('firmware')} is running on {result.port} ({result.chip}, board {board})")
    if info.get("wifi") == "connected":
        click.echo(f"Wi-Fi: {info.get('ip')} (RSSI {info.get('rssi')} dBm)")
    todo = result.todo()
    for step in todo:
        click.echo(f"to do: {step}")
    if not todo:
        click.echo("nothing left to provision")


@click.command("deploy")
@click.option("-p", "--port", envvar="POCKETPOST_PORT", metavar="PORT", help="The board's console (default: auto-detect).")
@click.option("--board", "board", type=BoardName(), help="Also copy this board's definition (board.json).")
@click.pass_context
def deploy_command(ctx, port, board):
    """Copy the changed compiled firmware files onto a board that runs MicroPython (over its
    console, with mpremote), then soft-reset it."""
    port = port or (ctx.find_root().obj.port if ctx.find_root().obj else None)
    result = deploy.deploy(port=port, board_name=board, emit=lambda line: click.echo(line, err=True))
    click.echo(f"pocketpost {result.firmware} is running on {result.port}: {len(result.written)} files written, "
               f"{len(result.removed)} removed, {result.unchanged} unchanged")
