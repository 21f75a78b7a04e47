"""`pocketpost apply`: make every board of an inventory match it, in parallel, and report like
Ansible (ok / changed / failed per item, a recap per board); `pocketpost hash-password`: the
`password_hash` values an inventory holds instead of passwords."""

import difflib
from concurrent.futures import ThreadPoolExecutor

import click

from . import inventory as inv
from .apply import CHANGED, FAILED, OK, BoardResult, Item, apply_board
from .errors import PocketpostError
from .passwords import DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS, hash_password
from .provision import DEFAULT_TIMEOUT, check_password

DEFAULT_FORKS = 5
WIDTH = 79


class ApplyFailed(PocketpostError):
    """At least one board failed or could not be reached."""

    exit_code = 1


class BadPassword(PocketpostError):
    """A password hash-password cannot take (nothing printed)."""

    exit_code = 2


def run(specs, check=False, forks=DEFAULT_FORKS, timeout=DEFAULT_TIMEOUT, apply=apply_board):
    """Applies every spec, `forks` boards at a time; yields the results in the order of
    `specs`, each as soon as it and those before it are done. One board's failure, even an
    unexpected exception, never stops the others."""

    def one(spec):
        try:
            return apply(spec, check=check, timeout=timeout)
        except Exception as e:  # a bug must not take the other boards down
            result = BoardResult(spec.name, spec.port)
            result.items.append(Item("board", FAILED, f"internal error: {type(e).__name__}: {e}"))
            return result

    with ThreadPoolExecutor(max_workers=max(1, forks)) as pool:
        for future in [pool.submit(one, spec) for spec in specs]:
            yield future.result()


def banner(text):
    return text + " " + "*" * max(3, WIDTH - len(text) - 1)


def show_result(result, diff, echo):
    echo(banner(f"BOARD [{result.name}]"))
    if result.unreachable is not None:
        echo(f"unreachable: [{result.name}] {result.unreachable}")
    for item in result.items:
        text = f"{item.status}: [{result.name}] {item.name}"
        echo(text + (f": {item.message}" if item.message else ""))
        if diff and item.status == CHANGED and item.before is not None:
            for line in diff_lines(item.before, item.after):
                echo(f"    {line}")
    echo("")


def diff_lines(before, after):
    """The lines of a change: kept ones indented, removed ones `- `, added ones `+ `."""
    return [line for line in difflib.ndiff(before, after) if not line.startswith("? ")]


def recap_line(result):
    unreachable = 1 if result.unreachable is not None else 0
    return (
        f"{result.name:<26} : ok={result.count(OK):<4} changed={result.count(CHANGED):<4} "
        f"unreachable={unreachable:<4} failed={result.count(FAILED):<4}"
    ).rstrip()


def _limit_names(values):
    names = []
    for value in values:
        names += [n.strip() for n in value.split(",") if n.strip()]
    return names


@click.command("apply", short_help="Make the boards of an inventory match it.")
@click.argument("inventory", metavar="INVENTORY")
@click.option(
    "-l", "--limit", multiple=True, metavar="NAMES",
    help="Only these boards or groups (comma-separated; may be repeated).",
)
@click.option("-C", "--check", is_flag=True, help="Change nothing; say what would change.")
@click.option("-D", "--diff", is_flag=True, help="Show each change's before and after (secrets masked).")
@click.option(
    "-f", "--forks", type=click.IntRange(1, 64), default=DEFAULT_FORKS, show_default=True,
    help="How many boards to work on at once.",
)
@click.pass_context
def apply_command(ctx, inventory, limit, check, diff, forks):
    """Make the boards of INVENTORY (a YAML file, docs/inventory.md) match it.

    Reads each board's state over its console, changes only what differs and prints per board
    and item ok, changed or failed, then a recap. Exit 0 when every board matches (or would,
    with --check); 1 when a board failed or could not be reached; 2 for an inventory error
    (then nothing was sent)."""
    settings = ctx.find_root().obj
    timeout = getattr(settings, "timeout", DEFAULT_TIMEOUT)
    loaded = inv.load(inventory)
    selected = loaded.select(_limit_names(limit))
    # Every secret is read before any board is contacted: a missing one stops everything.
    errors, specs = [], []
    for spec in selected:
        try:
            specs.append(inv.resolve(spec, loaded.base_dir))
        except inv.InventoryError as e:
            errors += e.errors
    if errors:
        raise inv.InventoryError(errors)

    echo = click.echo
    mode = " (check mode: nothing is changed)" if check else ""
    echo(banner(f"APPLY [{inventory}]{mode}"))
    echo("")
    results = []
    for result in run(specs, check=check, forks=forks, timeout=timeout):
        results.append(result)
        show_result(result, diff, echo)
        if result.reboot_keys and not check:
            verb = "takes" if len(result.reboot_keys) == 1 else "take"
            echo(
                f"note: [{result.name}] {', '.join(result.reboot_keys)} {verb} effect after a reboot: "
                f"pocketpost --port {result.port} reboot"
            )
            echo("")
    echo(banner("RECAP"))
    for result in results:
        echo(recap_line(result))
    failed = [r for r in results if r.failed]
    if failed:
        names = ", ".join(r.name + (" (unreachable)" if r.unreachable is not None else "") for r in failed)
        raise ApplyFailed(f"{len(failed)} of {len(results)} boards failed: {names}")


@click.command("hash-password", short_help="Print a password hash for an inventory.")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@click.option(
    "--iterations", type=click.IntRange(MIN_ITERATIONS, MAX_ITERATIONS), default=DEFAULT_ITERATIONS,
    show_default=True, help="PBKDF2 iterations (each login on the board computes them).",
)
def hash_password_command(password_stdin, iterations):
    """Print the hash of a password, for `password_hash` in an inventory.

    The hash is what the board stores (PBKDF2-HMAC-SHA256 with a random salt); nothing is sent
    anywhere. Prompts twice without echo unless --password-stdin."""
    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = click.prompt(
            "Password", hide_input=True, confirmation_prompt="Repeat the password", err=True
        )
    try:
        check_password(password)
    except ValueError as e:
        raise BadPassword(str(e)) from None
    click.echo(hash_password(password, iterations))
