"""The `pocketpost` command line: the simulator and provisioning over a board's console.

Thin click commands over the library (provision.Board, sim.Simulator); `main(argv)` runs it and
returns the exit code. Errors are one line on stderr and a non-zero exit:
1 other failures, 2 bad usage or input (nothing was sent), 3 the board did not answer,
4 the board refused the request, 5 the port cannot be found or opened.
"""

import json
import os
import re

import click
from click.shell_completion import CompletionItem

from . import __version__, firmware, sim
from . import collect as host_collect
from . import relay as host_relay
from . import tls as tls_certificates
from .board_commands import boards_command, build_command, deploy_command, flash_command
from .check import check_command
from .errors import PocketpostError
from .fleet import apply_command, hash_password_command
from .mailbox_commands import mailbox_command
from .provision import (
    CONFIG_KEYS,
    DEFAULT_TIMEOUT,
    Board,
    check_apop_secret,
    check_config_key,
    check_password,
    check_user_name,
    convert_config_value,
)

APOP_WARNING = (
    "warning: APOP needs the password itself: it is sent to the board in clear text and stored "
    "there unhashed"
)


class Failure(click.ClickException):
    """A PocketpostError or a refused value, shown as one line with its exit code."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class Group(click.Group):
    """A command group whose failures are one line each (no usage text for a bad value)."""

    group_class = type  # subgroups are of this class too

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PocketpostError as e:
            raise Failure(str(e), e.exit_code) from None
        except click.BadParameter as e:
            raise Failure(e.format_message(), e.exit_code) from None


# ---- parameter types


class Checked(click.ParamType):
    """A value checked (and normalized) by a function that raises ValueError saying why not."""

    def __init__(self, name, check, completions=()):
        self.name = name
        self.check = check
        self.completions = completions

    def convert(self, value, param, ctx):
        try:
            return self.check(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        return [CompletionItem(c) for c in self.completions if c.startswith(incomplete)]


def parse_demo_user(text):
    """(name, password) from "NAME:PASSWORD"."""
    name, sep, password = text.partition(":")
    if not sep:
        raise ValueError("expected NAME:PASSWORD")
    return check_user_name(name), check_password(password)


def check_size(units):
    """A check of an amount of memory as MicroPython and the unix board write it (64M, 160k,
    4096), with the unit letters its consumer understands."""

    def check(text):
        if not re.fullmatch(rf"[1-9][0-9]*[{units}]?", text):
            raise ValueError(f"{text!r} is not a size such as 64M, 160k or 4096")
        return text

    return check


def join_domains(text):
    """The domains of a comma-separated list, checked, as the unix board's --domain takes them."""
    return ",".join(CONFIG_KEYS["domains"].convert(text))


USER_NAME = Checked("name", check_user_name)
CONFIG_KEY = Checked("key", check_config_key, sorted(CONFIG_KEYS))
TCP_PORT = click.IntRange(1, 65535)


# ---- output


def echo_json(value):
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def show_value(value):
    """A configuration value as a person types it."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value == "":
        return '""'
    return str(value)


def echo_table(rows, headers=None):
    """Rows of cells in aligned columns, under a header line if given."""
    rows = [headers, *rows] if headers else rows
    widths = [max(len(str(cell)) for cell in column) for column in zip(*rows)]
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def show_octets(n):
    """An amount of storage for people: 512 bytes, 63.9 MiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def read_password(from_stdin):
    """The password from one line of stdin, or typed twice without echo."""
    if from_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt="Repeat the password")
    try:
        return check_password(password)
    except ValueError as e:
        raise Failure(str(e), click.UsageError.exit_code) from None


# ---- commands


class Settings:
    """The global options, and the board session opened by the first command that needs it."""

    def __init__(self, port, timeout):
        self.port = port
        self.timeout = timeout
        self.board = None


def open_board() -> Board:
    """The board of the current command line, opened once; closed when the command ends."""
    ctx = click.get_current_context().find_root()
    settings = ctx.obj
    if settings.board is None:
        settings.board = ctx.with_resource(Board.open(settings.port, settings.timeout))
    return settings.board


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-p", "--port", envvar="POCKETPOST_PORT", show_envvar=True, metavar="PORT",
    help="The board's console: a serial device, a simulator's DATA/console, or a pyserial URL "
    "(socket://HOST:PORT, rfc2217://HOST:PORT). Default: the one ESP32 USB serial adapter plugged in.",
)
@click.option(
    "--timeout", envvar="POCKETPOST_TIMEOUT", show_envvar=True, type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT, show_default=True, help="Seconds to wait for each answer of the board.",
)
@click.version_option(__version__, prog_name="pocketpost")
@click.pass_context
def cli(ctx, port, timeout):
    """pocketpost: provision a pocketpost mail appliance over its serial console, or run one in
    the simulator."""
    ctx.obj = Settings(port, timeout)


@cli.group()
def user():
    """Mail users: add, list, delete, change passwords."""


@user.command("add")
@click.argument("name", type=USER_NAME)
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@click.option("--apop", is_flag=True, help="Also let the user log in with APOP (stores the password on the board).")
def user_add(name, password_stdin, apop):
    """Add user NAME; the password is hashed on this computer."""
    password = read_password(password_stdin)
    if apop:
        try:
            check_apop_secret(password)
        except ValueError as e:
            raise Failure(str(e), click.UsageError.exit_code) from None
        click.echo(APOP_WARNING, err=True)
    open_board().add_user(name, password, apop=apop)
    click.echo(f"user {name} added")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def user_list(as_json):
    """List the users with their number of messages."""
    users = open_board().list_users()
    if as_json:
        echo_json(users)
    elif not users:
        click.echo("no users")
    else:
        rows = [[u["name"], "yes" if u["apop"] else "no", u["messages"]] for u in users]
        echo_table(rows, ["NAME", "APOP", "MESSAGES"])


@user.command("del")
@click.argument("name", type=USER_NAME)
@click.option("--purge", is_flag=True, help="Delete the user's mailbox too.")
def user_del(name, purge):
    """Delete user NAME (its mail stays on the card unless --purge)."""
    open_board().delete_user(name, purge=purge)
    click.echo(f"user {name} deleted" + (" with its mailbox" if purge else ""))


@user.command("passwd")
@click.argument("name", type=USER_NAME)
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
def user_passwd(name, password_stdin):
    """Change the password of user NAME (and its APOP secret, if it has one)."""
    password = read_password(password_stdin)
    try:
        has_apop = open_board().change_password(name, password)
    except ValueError as e:  # the user has an APOP secret, and the password cannot be one
        raise Failure(f"{name} logs in with APOP too: {e}", click.UsageError.exit_code) from None
    if has_apop:
        click.echo(APOP_WARNING, err=True)
    click.echo(f"password of {name} changed")


@cli.group()
def config():
    """The board's settings."""


@config.command("get")
@click.argument("key", type=CONFIG_KEY, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_get(key, as_json):
    """Show all settings, or the value of KEY."""
    reply = open_board().get_config(key)
    if as_json:
        echo_json(reply)
    elif key is not None:
        click.echo(show_value(reply["value"]))
    else:
        overridden = set(reply["overridden"])
        echo_table(
            [[k, show_value(v), "(set by the board's command line)" if k in overridden else ""]
             for k, v in sorted(reply["config"].items())],
            ["KEY", "VALUE", ""],
        )


def _config_value(ctx, param, value):
    key = ctx.params.get("key")
    if key is None:
        return value
    try:
        return convert_config_value(key, value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


@config.command("set")
@click.argument("key", type=CONFIG_KEY)
@click.argument("value", callback=_config_value)
def config_set(key, value):
    """Set KEY to VALUE (lists comma-separated)."""
    reply = open_board().set_config(key, value)
    when = "now" if reply["applies"] == "now" else "after a reboot"
    click.echo(f"{key} = {show_value(reply['value'])} (takes effect {when})")
    if reply["overridden"]:
        click.echo(
            f"note: the board's command line sets {key} for this run; the stored value applies without it",
            err=True,
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(as_json):
    """Show the board's status."""
    status = dict(open_board().info())
    if as_json:
        echo_json(status)
        return
    rows = [
        ["firmware", f"{status.pop('firmware')} on board {status.pop('board')}"],
        ["uptime", f"{status.pop('uptime_s')} s"],
        ["heap", f"{status.pop('heap_free')} bytes free, {status.pop('heap_used')} used"],
        ["hostname", status.pop("hostname")],
        ["domains", show_value(status.pop("domains"))],
    ]
    ports = status.pop("ports")
    listening = status.pop("listening", [])
    others = [str(p) for p in listening if p not in (ports["pop3"], ports["smtp"])]
    extra = f", also {', '.join(others)}" if others else ""
    rows.append(["listening", f"{status.pop('bind')}: POP3 {ports['pop3']}, SMTP {ports['smtp']}{extra}"])
    tls = status.pop("tls", None)
    if tls is not None:
        if tls["certificate"]:
            required = "required for logins" if tls["required_for_auth"] else "optional for logins"
            rows.append(["tls", f"certificate installed, {required}, {tls['sessions']} sessions"])
        else:
            rows.append(["tls", "no certificate (pocketpost tls install)"])
    rows.append(["clients", str(status.pop("clients"))])
    rows.append(["users", str(status.pop("users"))])
    storage = status.pop("storage")
    if "free" in storage:
        space = f"{show_octets(storage['free'])} free of {show_octets(storage['total'])}"
        rows.append(["storage", f"{storage['state']}, {space}"])
    else:
        rows.append(["storage", storage["state"]])
    rows += [[key, show_value(value)] for key, value in sorted(status.items())]  # board fields
    echo_table(rows)


@cli.command()
@click.option(
    "-n", "lines", type=click.IntRange(min=0), default=20, show_default=True, help="How many of the last lines."
)
@click.option("-f", "--follow", is_flag=True, help="Then print the board's lines as they come until Ctrl-C.")
def logs(lines, follow):
    """Show the board's recent log lines."""
    board = open_board()
    if not follow:
        for line in board.log_tail(lines):
            click.echo(line)
        return
    try:
        board.follow_logs(lines, click.echo)
    except KeyboardInterrupt:
        pass  # the way to end --follow


@cli.command()
def reboot():
    """Restart the board (the servers stop cleanly first)."""
    open_board().reboot()
    click.echo("rebooting")


@cli.group()
def tls():
    """The board's TLS certificate: make one, install it, show it."""


@tls.command("generate")
@click.option("--hostname", required=True, help="The name (or IP address) mail clients use for the board.")
@click.option("--cert-out", type=click.Path(dir_okay=False, writable=True), required=True, help="Where to write the certificate (PEM).")
@click.option("--key-out", type=click.Path(dir_okay=False, writable=True), required=True, help="Where to write the key (PEM, unencrypted: keep it private).")
@click.option("--days", type=click.IntRange(1, 3650), default=tls_certificates.DEFAULT_DAYS, show_default=True)
@click.option("--key-type", type=click.Choice(["ec", "rsa"]), default="ec", show_default=True, help="EC P-256 handshakes cost a board far less than RSA 2048.")
def tls_generate(hostname, cert_out, key_out, days, key_type):
    """Make a key and a self-signed certificate on this computer."""
    cert_pem, key_pem = tls_certificates.generate(hostname, days, key_type)
    with open(cert_out, "wb") as f:
        f.write(cert_pem)
    with open(os.open(key_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key_pem)
    click.echo(f"certificate for {hostname} written to {cert_out}, key to {key_out}")


@tls.command("install")
@click.option("--cert", "cert_path", type=click.Path(exists=True, dir_okay=False), required=True, help="The certificate (PEM or DER).")
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False), required=True, help="Its key (PEM or DER, unencrypted).")
def tls_install(cert_path, key_path):
    """Send a certificate and key to the board; it serves TLS with them at once."""
    with open(cert_path, "rb") as f:
        cert_data = f.read()
    with open(key_path, "rb") as f:
        key_data = f.read()
    cert_der, key_der = tls_certificates.to_der(cert_data, key_data)
    board = open_board()
    shown = tls_certificates.install(
        board, cert_der, key_der, lambda done, total: click.echo(f"\rsending {done}/{total} octets", nl=False, err=True)
    )
    click.echo("", err=True)
    click.echo(f"installed: {shown['subject']}, valid until {shown['not_after']}, SHA-256 {shown['sha256']}")
    if shown.get("applies") == "reboot":
        click.echo("the board had no room to load it now: it takes effect after `pocketpost reboot`")


@tls.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tls_show(as_json):
    """Show the installed certificate (the key stays on the board)."""
    shown = open_board().request("tls.show")
    if as_json:
        echo_json(shown)
        return
    echo_table([[k, shown[k]] for k in ("subject", "issuer", "not_before", "not_after", "key", "sha256")])


@cli.group()
def queue():
    """The board's queue of mail for other domains (relayed through its smarthost)."""


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def queue_list(as_json):
    """List the queued messages: ID, sender, recipients pending, tries, next try, last error."""
    messages = host_relay.queue_list(open_board())
    if as_json:
        echo_json(messages)
        return
    if not messages:
        click.echo("the queue is empty")
        return
    rows = [[m["id"], m["from"] or "<>", f"{m['pending']}/{m['recipients']}", m["tries"], f"{m['age_s']}s",
             f"{m['next_s']}s", m["error"]] for m in messages]
    echo_table(rows, ["id", "from", "pending", "tries", "age", "next try", "last error"])


@queue.command("show")
@click.argument("qid", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def queue_show(qid, as_json):
    """Show one queued message's envelope and each recipient's state."""
    shown = host_relay.queue_show(open_board(), qid)
    if as_json:
        echo_json(shown)
        return
    echo_table([[k, shown[k]] for k in ("id", "from", "size", "age_s", "tries", "next_s", "error")])
    echo_table([[r["state"], r["address"], r["reply"]] for r in shown["recipients"]], ["state", "recipient", "reply"])


@queue.command("flush")
def queue_flush():
    """Try every queued message now."""
    click.echo(f"{host_relay.queue_flush(open_board())} messages to be tried now")


@queue.command("delete")
@click.argument("qid", metavar="ID")
def queue_delete(qid):
    """Delete a queued message (it is not sent, nor bounced)."""
    click.echo(f"deleted {host_relay.queue_delete(open_board(), qid)}")


@cli.group()
def relay():
    """The smarthost relay: the CA certificates that verify the smarthost."""


@relay.group("ca")
def relay_ca():
    """CA certificates the board trusts for its smarthost (the board has no CA bundle)."""


@relay_ca.command("install")
@click.argument("path", metavar="FILE.pem", type=click.Path(exists=True, dir_okay=False))
def relay_ca_install(path):
    """Install the CA certificates in FILE.pem (PEM bundle of 1-8, or one DER), replacing those installed."""
    with open(path, "rb") as f:
        data = f.read()
    reply = host_relay.install_ca(open_board(), data)
    for c in reply["certificates"]:
        click.echo(f"installed: {c['subject']}, valid until {c['not_after']}, SHA-256 {c['sha256']}")
    if reply.get("applies") == "reboot":
        click.echo("the board had no room to load them now: they take effect after `pocketpost reboot`")


@relay_ca.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def relay_ca_show(as_json):
    """Show the installed CA certificates."""
    shown = host_relay.show_ca(open_board())
    if as_json:
        echo_json(shown)
        return
    echo_table([[c["subject"], c["not_after"], c["sha256"]] for c in shown], ["subject", "valid until", "SHA-256"])


@cli.group()
def collect():
    """The collector: users' accounts at outside providers, polled over POP3S into local mailboxes."""


def _echo_accounts(accounts, as_json):
    """The collector's accounts as JSON, or as a table (collect list, collect now)."""
    if as_json:
        echo_json(accounts)
        return
    if not accounts:
        click.echo("no collector accounts")
        return
    rows = [[a["id"], a["user"], f"{a['login']}@{a['host']}:{a['port']}", a["security"],
             f"{a['interval']}m", "keep" + (f" {a['delete_days']}d" if a["delete_days"] else "") if a["keep"] else "delete",
             "-" if a["last_poll_ago_s"] is None else f"{a['last_poll_ago_s']}s ago", a["fetched"],
             "-" if a["next_s"] is None else f"{a['next_s']}s", a["result"]] for a in accounts]
    echo_table(rows, ["id", "user", "account", "security", "every", "on provider", "last poll", "fetched", "next", "result"])


@collect.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def collect_list(as_json):
    """List the accounts: provider, interval, the last poll, its result, messages fetched, next poll."""
    _echo_accounts(host_collect.list_accounts(open_board()), as_json)


@collect.command("add")
@click.argument("user")
@click.option("--host", required=True, help="The provider's POP3 server, e.g. pop.gmail.com.")
@click.option("--login", required=True, help="The login at the provider (often the full address).")
@click.option("--security", type=click.Choice(host_collect.SECURITY), default="tls", show_default=True,
              help="tls: POP3S (implicit TLS, port 995); stls: STLS on port 110; plain: no TLS (a LAN server only).")
@click.option("--port", type=TCP_PORT, help="Default: 995 with tls, 110 otherwise.")
@click.option("--interval", type=click.IntRange(host_collect.MIN_INTERVAL, 1440), default=host_collect.DEFAULT_INTERVAL,
              show_default=True, help="Minutes between polls (at least 5).")
@click.option("--keep/--no-keep", default=True, show_default=True, help="Leave the messages on the provider.")
@click.option("--delete-after", "delete_days", type=click.IntRange(0, 3650), default=0,
              help="With --keep: delete from the provider N days after the first fetch (0: never).")
@click.option("--max-size", type=click.IntRange(0), default=0, help="Leave larger messages (octets) on the provider (0: no limit).")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def collect_add(user, host, login, security, port, interval, keep, delete_days, max_size, password_stdin, as_json):
    """Add a provider account for USER (the same user, host and login again: change it). The
    password is kept on the board and never shown again."""
    if password_stdin:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    else:
        password = click.prompt("Password at the provider", hide_input=True)
    if not password:
        raise Failure("the password is empty", click.UsageError.exit_code)
    shown = host_collect.add_account(open_board(), user, host, login, password, security=security, port=port,
                                     interval=interval, keep=keep, delete_days=delete_days, max_size=max_size)
    if as_json:
        echo_json(shown)
        return
    click.echo(f"collector account {shown['id']} {'added' if shown['created'] else 'changed'}: "
               f"{shown['login']}@{shown['host']}:{shown['port']} ({shown['security']}) for {shown['user']}, "
               f"every {shown['interval']} minutes; polled now")


@collect.command("del")
@click.argument("aid", metavar="ID")
def collect_del(aid):
    """Delete account ID (its password and fetch state go; the mail fetched stays)."""
    click.echo(f"collector account {host_collect.delete_account(open_board(), aid)} deleted")


@collect.command("now")
@click.argument("aid", metavar="[ID]", required=False)
@click.option("--wait", type=click.FloatRange(0), default=120, show_default=True, help="Seconds to wait for the polls' results.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def collect_now(aid, wait, as_json):
    """Poll account ID (or every account) now and show the results."""
    _echo_accounts(host_collect.poll_now(open_board(), aid, wait), as_json)


@cli.command("sim")
@click.option(
    "--data", type=click.Path(file_okay=False), default=sim.DEFAULT_DATA, show_default=True,
    envvar="POCKETPOST_SIM_DATA", show_envvar=True,
    help="Folder of the SD and flash images, the console link and the compiled firmware; kept across runs.",
)
@click.option(
    "--micropython", envvar="POCKETPOST_MICROPYTHON", show_envvar=True, metavar="PATH",
    help="The MicroPython unix port to run (default: the one installed with pocketpost).",
)
@click.option(
    "--bind", type=Checked("address", CONFIG_KEYS["bind"].convert), default=sim.DEFAULT_BIND,
    show_default=True, help="Address the servers listen on.",
)
@click.option("--pop3-port", type=TCP_PORT, default=sim.DEFAULT_POP3_PORT, show_default=True)
@click.option("--smtp-port", type=TCP_PORT, default=sim.DEFAULT_SMTP_PORT, show_default=True)
@click.option("--pop3s-port", type=TCP_PORT, help="POP3 over TLS (implicit, RFC 8314); off unless given.")
@click.option("--smtps-port", type=TCP_PORT, help="Submission over TLS (implicit, RFC 8314); off unless given.")
@click.option("--submission-port", type=TCP_PORT, help="Submission with STARTTLS and AUTH (RFC 6409); off unless given.")
@click.option(
    "--domain", type=Checked("domain[,domain]", join_domains), default=sim.DEFAULT_DOMAIN,
    show_default=True, help="Local mail domains, comma-separated.",
)
@click.option(
    "--sd-size", type=Checked("size", check_size("kKmMgG")), default=sim.DEFAULT_SD_SIZE,
    show_default=True, help="Size of the SD image when it is created.",
)
@click.option(
    "--heap", type=Checked("size", check_size("kKmM")), default=firmware.DEFAULT_HEAP,
    show_default=True, help="MicroPython heap size.",
)
@click.option(
    "--demo-user", type=Checked("name:password", parse_demo_user), metavar="NAME:PASSWORD",
    help="A user created at start if missing.",
)
@click.option(
    "--watchdog", type=click.IntRange(0, 3600), default=firmware.DEFAULT_WATCHDOG_S, show_default=True,
    metavar="SECONDS", help="Reset the board when its firmware stops feeding its watchdog this long (0: off).",
)
@click.option(
    "--code-in-place", is_flag=True,
    help="Run the modules from a read-only image (ROMFS), as a frozen build runs them from flash, "
    "instead of loading them into the heap.",
)
def sim_command(data, micropython, bind, pop3_port, smtp_port, pop3s_port, smtps_port, submission_port,
                domain, sd_size, heap, demo_user, watchdog, code_in_place):
    """Run the firmware on the emulated board (MicroPython's unix port) in the foreground.

    Its console is a pseudo-terminal at DATA/console: use it as the --port of pocketpost, or
    with picocom, screen or `mpremote connect DATA/console`. Ctrl-C stops the board cleanly."""
    sim.Simulator(
        data=data, micropython=micropython, bind=bind, pop3_port=pop3_port, smtp_port=smtp_port,
        pop3s_port=pop3s_port, smtps_port=smtps_port, submission_port=submission_port,
        domain=domain, sd_size=sd_size, heap=heap, demo_user=demo_user, watchdog=watchdog,
        code_in_place=code_in_place,
    ).run()


cli.add_command(check_command)
cli.add_command(boards_command)
cli.add_command(build_command)
cli.add_command(flash_command)
cli.add_command(deploy_command)
cli.add_command(apply_command)
cli.add_command(hash_password_command)
cli.add_command(mailbox_command)


def main(argv=None) -> int:
    """Runs the command line with `argv` (default: sys.argv[1:]); returns the exit code."""
    try:
        cli.main(args=argv, prog_name="pocketpost")
    except SystemExit as e:
        if isinstance(e.code, int):
            return e.code
        return 0 if e.code is None else 1
    return 0
