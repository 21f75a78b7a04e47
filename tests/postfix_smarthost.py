"""Postfix as the relay's smarthost: a private Postfix (Debian's 3.7, `postfix -c DIR start`)
with its own configuration, queue and data folders and master.cf, listening on loopback ports
only: submission with STARTTLS required, and implicit TLS (smtpd_tls_wrappermode), both with
AUTH (SASL through a private Dovecot's auth service, with its own passwd-file) and TLS before
AUTH. What Postfix accepts it relays on at once to an aiosmtpd sink on loopback, so a test
sees the message as Postfix passed it on.

Postfix's master runs as root only (it switches its daemons to the `postfix` user), so these
tests need root, as `make test` runs in CI; the packages are Debian's postfix and
dovecot-core. Nothing of a system Postfix or Dovecot is used or touched (neither needs to run).
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from aiosmtpd.controller import Controller

from reference_servers import SEARCH_PATH, MissingTool, free_port
from smarthost import Handler

INSTALL_HINT = "apt-get install postfix dovecot-core (Debian packages)"

MASTER_CF = """\
127.0.0.1:{submission} inet n - n - - smtpd
127.0.0.1:{smtps} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
# A private Postfix: the relay tests' smarthost (tests/postfix_smarthost.py).
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = smarthost.test
mydomain = smarthost.test
myorigin = smarthost.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
# No client may relay without AUTH, and AUTH only inside TLS.
mynetworks = 127.0.0.2/32
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {dir}/auth/auth-postfix
# Headers as the client sent them (no Message-ID or Date added): only Received: is Postfix's.
local_header_rewrite_clients =
# On at once to the sink (no DNS, no TLS there).
relayhost = [127.0.0.1]:{sink}
smtp_tls_security_level = none
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
"""

DOVECOT_CONF = """\
# A private Dovecot with no protocol: only its auth service, for Postfix's SASL.
base_dir = {dir}/auth/run
state_dir = {dir}/auth/state
log_path = {dir}/auth/dovecot.log
protocols =
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {dir}/auth/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service anvil {{
  chroot =
}}
service auth {{
  unix_listener {dir}/auth/auth-postfix {{
    mode = 0666
  }}
}}
"""


def _find(name):
    path = shutil.which(name, path=SEARCH_PATH)
    if path is None:
        raise MissingTool(f"{name} is not installed: {INSTALL_HINT}")
    return path


class PostfixSmarthost:
    """Postfix on `submission` (STARTTLS) and `smtps` (implicit TLS), taking AUTH as
    user/password; `handler.messages` has what it relayed on."""

    def __init__(self, cert, key, user, password):
        if os.geteuid() != 0:
            raise MissingTool("Postfix's master runs as root only: run these tests as root (as make test does in CI)")
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            raise MissingTool(f"user postfix is missing (the Postfix package creates it): {INSTALL_HINT}") from None
        self.postfix = _find("postfix")
        self.dovecot = _find("dovecot")
        self.submission, self.smtps, self.sink = free_port(), free_port(), free_port()
        # Outside pytest's private (0700) tree: Postfix's and Dovecot's daemons, as their own
        # users, pass through it.
        self.dir = Path(tempfile.mkdtemp(prefix="pocketpost-postfix-"))
        os.chmod(self.dir, 0o755)
        for sub in ("etc", "queue", "data", "auth"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix", "postfix")
        shutil.copy(cert, self.dir / "cert.pem")
        shutil.copy(key, self.dir / "key.pem")
        values = dict(dir=self.dir, cert=self.dir / "cert.pem", key=self.dir / "key.pem", sink=self.sink,
                      submission=self.submission, smtps=self.smtps)
        (self.dir / "etc" / "main.cf").write_text(MAIN_CF.format(**values))
        (self.dir / "etc" / "master.cf").write_text(MASTER_CF.format(**values))
        (self.dir / "auth" / "users").write_text(f"{user}:{{PLAIN}}{password}\n")
        (self.dir / "auth" / "dovecot.conf").write_text(DOVECOT_CONF.format(**values))
        self.handler = Handler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.sink)
        self.started = []

    def _run(self, *args):
        # No pipes: the daemons these start would keep them open (their messages go to their
        # log files).
        result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=60)
        if result.returncode != 0:
            dovecot = self.dir / "auth" / "dovecot.log"
            raise AssertionError(f"{' '.join(map(str, args))} failed:\n{self.log()}{dovecot.read_text() if dovecot.exists() else ''}")

    def __enter__(self):
        try:
            self.controller.start()
            self.started.append("sink")
            self._run(self.dovecot, "-c", self.dir / "auth" / "dovecot.conf")
            self.started.append("dovecot")
            self._run(self.postfix, "-c", self.dir / "etc", "start")
            self.started.append("postfix")
            self._wait_for(self.submission)
            self._wait_for(self.smtps)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_for(self, port, timeout=20):
        import socket

        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"Postfix does not listen on {port}:\n{self.log()}") from None
                time.sleep(0.1)

    def log(self):
        """Postfix's log (its maillog file)."""
        try:
            return (self.dir / "maillog").read_text()
        except OSError:
            return ""

    def wait_log(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def __exit__(self, *exc):
        if "postfix" in self.started:
            subprocess.run([self.postfix, "-c", str(self.dir / "etc"), "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        if True:  # (a start that failed midway may have left it running)
            pid = self.dir / "auth" / "run" / "master.pid"
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (OSError, ValueError):
                pass
        if "sink" in self.started:
            self.controller.stop()
        self.started = []
        shutil.rmtree(self.dir, ignore_errors=True)
