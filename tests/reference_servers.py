"""Reference servers for `pocketpost check`: a private Dovecot POP3 server and an aiosmtpd SMTP
server that delivers into the Maildir Dovecot serves, both on free loopback ports.

Dovecot runs from its own configuration (`dovecot -c PRIVATE.conf -F`) with its own base and
state directories, so it touches nothing of a system Dovecot (none needs to run). Needs the
Debian packages dovecot-core and dovecot-pop3d. Users and passwords come from a passwd-file;
plain-text logins are allowed (loopback only, no TLS).

As root, Dovecot runs its login processes as its package's users (dovenull, dovecot) and refuses
mail access as root, so the mailbox belongs to `nobody` and the servers' directory lives outside
pytest's private (mode 0700) temporary tree, where `nobody` can reach it. As another user,
everything runs as that user.
"""

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from email.utils import formatdate
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

INSTALL_HINT = "apt-get install dovecot-core dovecot-pop3d (Debian packages)"
# Where the dovecot executable may be: PATH, and the sbin folders a non-root PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
# Where Dovecot's packages put the POP3 server (Debian; other systems).
POP3_SERVERS = ("/usr/lib/dovecot/pop3", "/usr/libexec/dovecot/pop3")
# The Debian package's unprivileged users, which Dovecot's processes switch to when run as root.
DOVECOT_USERS = ("dovecot", "dovenull")


class MissingTool(AssertionError):
    """A program the reference servers need is not installed; the message says what to install."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_dovecot():
    """The dovecot executable; raises MissingTool naming the packages when it is missing."""
    path = shutil.which("dovecot", path=SEARCH_PATH)
    if path is None:
        raise MissingTool(f"dovecot is not installed: {INSTALL_HINT}")
    if not any(os.access(server, os.X_OK) for server in POP3_SERVERS):
        raise MissingTool(f"Dovecot's POP3 server is not installed: {INSTALL_HINT}")
    if os.geteuid() == 0:
        for user in DOVECOT_USERS:
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise MissingTool(f"user {user} is missing (the Dovecot package creates it): {INSTALL_HINT}") from None
    return path


class LongLineSMTP(SMTP):
    """aiosmtpd's SMTP with lines up to 1 MiB in DATA: by default it refuses lines over 1000
    octets (RFC 5321 §4.5.3.1.6 allows either)."""

    line_length_limit = 1 << 20


class LongLineController(Controller):
    def factory(self):
        return LongLineSMTP(self.handler, **self.SMTP_kwargs)


class MaildirDelivery:
    """An aiosmtpd handler delivering mail for one user of one domain into a Maildir, as a
    local delivery agent does: Return-Path, Delivered-To and Received fields go before the
    message, line ends are stored as LF (as Dovecot's own LDA stores them), and the file is
    written in tmp/ and renamed into new/. Other recipients are refused: 550 for an unknown
    user, 550 for another domain (no relaying)."""

    def __init__(self, maildir, user, domain, owner):
        self.maildir = Path(maildir)
        self.user = user
        self.domain = domain
        self.owner = owner  # (uid, gid) the files must belong to, or None
        self.delivered = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, at, domain = address.rpartition("@")
        if not at or domain.lower() != self.domain:
            return "550 Relay access denied"
        if local.lower() != self.user:
            return "550 User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        trace = (
            f"Return-Path: <{envelope.mail_from}>\r\n"
            f"Delivered-To: {envelope.rcpt_tos[0]}\r\n"
            f"Received: from {session.host_name} ([{session.peer[0]}])\r\n"
            f"\tby {self.domain} (aiosmtpd) for <{envelope.rcpt_tos[0]}>; {formatdate()}\r\n"
        ).encode()
        self.deliver(trace + envelope.original_content)
        return "250 OK delivered"

    def deliver(self, message):
        """Puts `message` (CRLF line ends) into the Maildir's new/ folder."""
        self.delivered += 1
        name = f"{time.time_ns()}.P{os.getpid()}Q{self.delivered}.{socket.gethostname()}"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(message.replace(b"\r\n", b"\n"))
        if self.owner is not None:
            os.chown(tmp, *self.owner)
        tmp.rename(self.maildir / "new" / name)


class ReferenceServers:
    """Dovecot POP3 and aiosmtpd SMTP on loopback for one user. `lock_session` turns on
    Dovecot's POP3 maildrop lock (off by default in Dovecot: then a second session logs in);
    `long_lines` lets aiosmtpd take lines over 1000 octets."""

    def __init__(
        self, user="alice", password="wonderland", domain="reference.test", lock_session=True, long_lines=True
    ):
        self.user = user
        self.password = password
        self.domain = domain
        self.lock_session = lock_session
        self.long_lines = long_lines
        self.pop3_port = free_port()
        self.smtp_port = free_port()
        self.dir = None
        self.dovecot = None
        self.smtp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def maildir(self):
        return self.dir / "home" / self.user / "Maildir"

    def start(self):
        dovecot = find_dovecot()
        self.dir = Path(tempfile.mkdtemp(prefix="pocketpost-ref-"))
        try:
            owner = self._prepare()
            self.dovecot = subprocess.Popen(
                [dovecot, "-c", str(self.dir / "dovecot.conf"), "-F"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            self._wait_for_pop3()
            controller = LongLineController if self.long_lines else Controller
            smtp = controller(
                MaildirDelivery(self.maildir, self.user, self.domain, owner),
                hostname="127.0.0.1",
                port=self.smtp_port,
                server_hostname=self.domain,
            )
            smtp.start()
            self.smtp = smtp  # stop() may stop only a started controller
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self):
        """Writes the configuration, the passwd-file and the Maildir; returns the (uid, gid)
        delivered files must belong to (None when it is the current user)."""
        if os.geteuid() == 0:
            mail_user = pwd.getpwnam("nobody")
            os.chmod(self.dir, 0o711)  # Dovecot's processes, as other users, pass through
            owner = (mail_user.pw_uid, mail_user.pw_gid)
            users = ""  # keep Dovecot's defaults: dovecot and dovenull
        else:
            mail_user = pwd.getpwuid(os.getuid())
            owner = None
            name = mail_user.pw_name
            group = grp.getgrgid(mail_user.pw_gid).gr_name
            users = f"default_internal_user = {name}\ndefault_internal_group = {group}\ndefault_login_user = {name}\n"
        home = self.dir / "home" / self.user
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        if owner is not None:
            for path in (home.parent, home, self.maildir, *(self.maildir / s for s in ("cur", "new", "tmp"))):
                os.chown(path, *owner)
        (self.dir / "users").write_text(
            f"{self.user}:{{PLAIN}}{self.password}:{mail_user.pw_uid}:{mail_user.pw_gid}::{home}::\n"
        )
        (self.dir / "dovecot.conf").write_text(
            f"""# A private Dovecot: POP3 only, on one loopback port, for the user in ./users.
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
{users}protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {mail_user.pw_uid}
mail_location = maildir:~/Maildir
pop3_lock_session = {"yes" if self.lock_session else "no"}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.dir}/users
}}
userdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
# No chroot: an unprivileged Dovecot may not chroot, and these processes need none.
service anvil {{
  chroot =
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""
        )
        return owner

    def _wait_for_pop3(self, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.pop3_port), timeout=2) as s:
                    if s.recv(100).startswith(b"+OK"):
                        return
            except OSError:
                pass
            if self.dovecot.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Dovecot did not start:\n{self.log()}")
            time.sleep(0.1)

    def log(self):
        """Dovecot's output and log, for failure messages."""
        text = ""
        if self.dovecot is not None and self.dovecot.poll() is not None:
            text += self.dovecot.stdout.read().decode("utf-8", "replace")
        log = self.dir / "dovecot.log"
        if log.exists():
            text += log.read_text("utf-8", "replace")
        return text[-4000:]

    def stop(self):
        if self.smtp is not None:
            self.smtp.stop()
            self.smtp = None
        if self.dovecot is not None:
            if self.dovecot.poll() is None:
                self.dovecot.terminate()
                try:
                    self.dovecot.wait(15)
                except subprocess.TimeoutExpired:
                    self.dovecot.kill()
                    self.dovecot.wait()
            self.dovecot.stdout.close()
            self.dovecot = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
