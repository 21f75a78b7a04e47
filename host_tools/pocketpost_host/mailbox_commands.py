"""`pocketpost mailbox export` and `import` (thin click commands over migrate.py)."""

import json
import sys

import click

from . import migrate


def _user_password(ctx, param, values):
    passwords = {}
    for text in values:
        name, sep, password = text.partition(":")
        if not name:
            raise click.BadParameter(f"{text!r}: expected NAME or NAME:PASSWORD", ctx, param)
        passwords[name] = password if sep else None
    return passwords


class Progress:
    """A progress bar in octets on stderr, shown only on a terminal and without --json."""

    def __init__(self, label, shown):
        self.label = label
        self.shown = shown and sys.stderr.isatty()
        self.bar = None

    def total(self, octets):
        if self.shown and octets:
            self.bar = click.progressbar(length=octets, label=self.label, file=sys.stderr)
            self.bar.__enter__()

    def __call__(self, octets):
        if self.bar is not None:
            self.bar.update(octets)

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _report(summary, as_json, verb):
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    would = "would be " if summary["dry_run"] else ""
    for u in summary["users"]:
        uidls = u["uidls"]
        detail = f"UIDLs kept {uidls['kept']}"
        if uidls["new"]:
            detail += f", new {uidls['new']}"
        if uidls["changed"]:
            detail += f", changed {uidls['changed']}"
        click.echo(f"{u['user']}: {u['messages']} messages, {u['octets']:,} octets {would}{verb} ({detail}; "
                   f"{u['written']} written now)")
    for s in summary["skipped"]:
        click.echo(f"skipped {s['message']}: {s['reason']}", err=True)
    for s in summary["uidl_changed"]:
        click.echo(f"new UIDL for {s['message']}: {s['reason']}", err=True)


@click.group("mailbox")
def mailbox_command():
    """Move mailboxes between a card and Dovecot (Maildir), mbox files and .eml folders."""


@mailbox_command.command("export")
@click.argument("source")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["maildir"]), default="maildir", show_default=True,
              help="What to write: one Maildir a user (with dovecot-uidlist) under DEST.")
@click.option("--user", "users", multiple=True, callback=_user_password, metavar="NAME[:PASSWORD]",
              help="Export only this user (repeatable); a pop3:// SOURCE needs NAME:PASSWORD for each.")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False),
              help="With a pop3s:// SOURCE: a certificate to trust (a board's self-signed one), PEM.")
@click.option("--dry-run", is_flag=True, help="Read and check everything, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def mailbox_export(source, dest, fmt, users, cafile, dry_run, as_json):
    """Export a card's mailboxes to Maildirs that Dovecot serves with the same POP3 UIDLs.

    SOURCE is a card's folder (mounted on this computer), a card image file (a sim's sd.img or a
    dd copy of a card; read with mtools, never mounted) or pop3://HOST[:PORT] (pop3s:// for
    POP3S) of a running board. Prints the Dovecot settings the Maildirs need."""
    progress = Progress("exporting", not as_json)
    try:
        summary = migrate.export_mailboxes(
            source, dest, fmt, users=sorted(users) or None, passwords={u: p for u, p in users.items() if p},
            dry_run=dry_run, progress=progress, on_total=progress.total, cafile=cafile,
        )
    finally:
        progress.close()
    _report(summary, as_json, "exported")
    if not as_json:
        click.echo("\nDovecot settings:\n" + summary["dovecot_config"], nl=False)


@mailbox_command.command("import")
@click.argument("source", type=click.Path(exists=True))
@click.argument("dest")
@click.option("--user",
              help="The user whose mailbox a single source becomes (or the one to take from a folder of Maildirs).")
@click.option("--format", "fmt", type=click.Choice(["auto", "maildir", "mbox", "eml"]), default="auto",
              show_default=True,
              help="What SOURCE is; auto: an mbox file, a Maildir, a folder of Maildirs or a folder of .eml files.")
@click.option("--mbox-quoting", type=click.Choice(["mboxrd", "mboxo"]), default="mboxrd", show_default=True,
              help="How the mbox quotes 'From ' lines in bodies.")
@click.option("--new-uidls", is_flag=True,
              help="Import messages whose UIDL no client can hold (not 1-70 printable characters) or that "
                   "another message has too, with new UIDLs (clients fetch them again).")
@click.option("--uidl-format", default=migrate.DOVECOT_DEFAULT_UIDL_FORMAT, show_default=True,
              help="The Maildir's Dovecot pop3_uidl_format, for messages its uidlist gives no P field.")
@click.option("--password", envvar="POCKETPOST_PASSWORD", show_envvar=True,
              help="With an smtp:// DEST: the user's password, to read over POP3 what the mailbox holds.")
@click.option("--domain", default="pocketpost.local", show_default=True,
              help="With an smtp:// DEST: the board's mail domain.")
@click.option("--pop3-port", type=click.IntRange(1, 65535), default=110, show_default=True,
              help="With an smtp:// DEST: the board's POP3 port.")
@click.option("--dry-run", is_flag=True, help="Read and check everything, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def mailbox_import(ctx, source, dest, user, fmt, mbox_quoting, new_uidls, uidl_format, password, domain, pop3_port,
                   dry_run, as_json):
    """Import a Maildir (with Dovecot's uidlist), an mbox or .eml files onto a card.

    DEST is a card's folder (mounted on this computer) or a card image file (written with mtools,
    never mounted; the board or sim must be stopped): every message keeps the UIDL its POP3
    clients know (the card's own form GGGGGGGG.N by its number, any other in the mailbox's
    uidls file), unless it is not a valid one (see --new-uidls). DEST `console` is the
    card of the board on --port, written from its MicroPython REPL (the firmware stops for
    the import and starts again after; UIDLs as for an image). DEST may also be
    smtp://HOST[:PORT] of a running board: every message then gets a new UIDL and the board's
    Return-Path and Received fields. The users must exist on the board (pocketpost user add)."""
    settings = ctx.find_root().obj
    if dest == "console" and getattr(settings, "port", None):
        dest = f"console:{settings.port}"  # the board of --port
    progress = Progress("importing", not as_json)
    try:
        summary = migrate.import_mailboxes(
            source, dest, user=user, fmt=fmt, quoting=mbox_quoting, new_uidls=new_uidls, dry_run=dry_run,
            progress=progress, on_total=progress.total, uidl_format=uidl_format,
            password=password, domain=domain, pop3_port=pop3_port,
        )
    finally:
        progress.close()
    _report(summary, as_json, "imported")
