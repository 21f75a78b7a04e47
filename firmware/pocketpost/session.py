# The base of a POP3 or SMTP session: its greeting, a command run (and run again) where the heap
# runs short, TLS places, AUTH's code. Loaded with the first protocol's code and unloaded with
# the last (server.session_begins), like transparency.py: between clients its ~2.6 KB of code is
# the console's, the relay's and the collector's heap.
from . import unload
from .heap import QUICK, with_relief
from .server import unload_idle


class Session:
    """Base of a protocol session. Subclasses implement `run` (which begins with `greet`) and
    `greeting`."""

    # Config key of the idle time-out in seconds.
    TIMEOUT_KEY = ""
    # Name in the log (its protocol's: POP3, SMTP below).
    NAME = ""
    # Sent when the session cannot go on (an internal error) before it closes.
    FAILED_REPLY = b""
    # The answer to a command that ran out of memory (a temporary error; the session goes on).
    NOMEM_REPLY = b""
    # Sent before closing when a reply ran out of memory after part of it was sent.
    NOMEM_CLOSING = b""

    def __init__(self, app, conn, peer, submission=False):
        self.app = app
        self.conn = conn
        self.peer = peer
        self.submission = submission  # the submission port: AUTH before MAIL (SMTP)
        self.secure = False  # inside TLS
        self.tls_place = False  # holds one of the TLS session places
        self.bad_commands = 0

    async def greet(self):
        """Queues the greeting, made again after the heap's relief while it runs short (four
        clients connecting at once beside four password checks had their sessions closed for
        want of its few hundred octets); the last MemoryError is the caller's (the client is
        told, and closed)."""
        try:
            self.log("connect")
        except MemoryError:
            pass  # the greeting matters more than the log line
        await with_relief(self.app.relieve_memory, self._greet)

    def _greet(self):
        self.conn.put(self.greeting())

    def timeout_ms(self):
        if self.conn.handshaking:
            return self.app.config["tls_handshake_timeout"] * 1000
        return self.app.config[self.TIMEOUT_KEY] * 1000

    def auth_allowed(self):
        """Whether logins are taken now: inside TLS, or where TLS is not required for them."""
        return self.secure or not self.app.tls_required_for_auth()

    def tls_offered(self):
        """Whether STLS/STARTTLS can be used now (when every TLS place is taken it is still
        offered, and answered with a temporary error)."""
        return not self.secure and self.app.tls_usable()

    def reserve_tls(self):
        """Takes one of the TLS session places; False when every place is taken. A session
        holds one place at most (an STLS that ran short keeps the place it took)."""
        app = self.app
        if self.tls_place:
            return True
        if not app.tls.acquire(app.config["tls_max_sessions"]):
            return False
        self.tls_place = True
        return True

    def begin_tls(self):
        """Continues the session inside TLS (a place is reserved, the go-ahead reply sent). The
        code of a protocol without sessions, kept a while for its next client, is unloaded
        first: a TLS session needs heap for its handshake and its records, and at 160k the POP3
        code of a client that had just left took the room that an AUTH inside TLS then needed."""
        unload_idle()
        self.conn.start_tls(self.app.tls)
        self.secure = True

    def timeout_reply(self):
        """What is sent when the session was idle too long, before the connection closes."""
        return b""

    def finish(self):
        """Called once when the session ends, however it ends."""

    def release(self):
        # After finish(): gives the TLS place back.
        if self.tls_place:
            self.tls_place = False
            self.app.tls.release()

    def refuse_auth(self):
        """The protocol's answer to an AUTH it refuses whatever the credentials, made without
        AUTH's code: what the command returns (True: the session ends), or None when the
        exchange goes on."""
        return None

    async def cmd_auth(self, arg):
        """AUTH (RFC 4954, RFC 5034): its code (auth.py, sasl.py) is loaded for the exchange
        and unloaded after it (a session keeps what it loaded until its exchange ends). Its
        loading, which changes nothing, is tried again after a shortage: the code needs blocks
        as large as its largest function, which a fragmented heap may have only after a relief.
        An AUTH the protocol refuses (out of sequence, or before TLS: `refuse_auth`) is answered
        without that code: beside a TLS session and the other protocol's code at 160k it may find
        no room, and the refusal became a temporary error."""
        refused = self.refuse_auth()
        if refused is not None:
            return refused
        try:
            from . import auth
        except MemoryError:
            unload("pocketpost.auth")
            unload("pocketpost.sasl")
            self.app.relieve_memory()
            from . import auth  # short again: the command's temporary error

        try:
            return await getattr(auth, self.NAME)(self, arg)
        finally:
            unload("pocketpost.auth")
            unload("pocketpost.sasl")

    def log(self, text):
        self.app.log.info(self.NAME, "{} {}".format(self.peer, text))

    async def command(self, handler, arg, redo=False):
        """Runs one command's handler; True when the session is to end (QUIT, too many bad
        commands, or a reply that ran short of memory after part of it had left). `redo`: the
        command changes nothing before its reply (or goes on where it stopped, as QUIT's
        deletion), so a shortage met before any of its reply left is answered by running it
        again with the heap relieved, after the pauses of heap.with_relief (the other sessions
        give back what they hold a moment later)."""
        app = self.app
        conn = self.conn
        mark = conn.mark()
        try:
            # Each run again begins where the reply began; none once part of a reply has left.
            # (One coroutine for the command and its guard: each frame of a command in flight is
            # heap that four sessions at once hold four times.)
            run = with_relief(app.relieve_memory, handler, self, arg, again=QUICK if redo else 0, possible=lambda: conn.rewind(mark), note=self._note_run_again)
            app.hold_point(self.NAME)  # the emulated board's test hook: a shortage in this command
            return await run
        except MemoryError:
            return not self.short_of_memory(mark)
        finally:
            app.held_next = None  # the test hook's shortage for this command, if any

    def _note_run_again(self):
        self.app.log.warn(self.NAME, "{} short of memory for a command, run again".format(self.peer))

    def short_of_memory(self, mark):
        """A command ran out of memory (a MemoryError reached the session loop): the heap gets
        back what can be given back and the command gets a temporary error. True when the
        session can go on; False when part of its reply had left already, and the session ends
        (with NOMEM_CLOSING). `mark` is where the output stood when the command began."""
        self.app.relieve_memory()
        conn = self.conn
        going_on = conn.rewind(mark)
        if not going_on:
            conn.drop_output()
        conn.put(self.NOMEM_REPLY if going_on else self.NOMEM_CLOSING)
        try:
            self.app.log.warn(self.NAME, "{} not enough memory for a command{}".format(self.peer, "" if going_on else ", closing"))
        except MemoryError:
            pass  # the reply matters more than the log line
        return going_on
