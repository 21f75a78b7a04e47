# The relay: sends the queued mail (outbox.py) to the smarthost, one connection at a time, with
# a verified certificate (the TLS context made here) and the SMTP client of smtpout.py. Loaded by
# App._relay for a pass through the queue and unloaded after it: nothing of it stays in the heap
# between passes.
#
# Retries follow Postfix's schedule: 300 s after the first failure, doubling, at most 4,000 s;
# a message still not delivered after relay_lifetime bounces (bounce.py). A 5xx reply bounces
# its recipient at once; 4xx replies, connection and TLS failures defer. Each recipient's state
# is written to the envelope after each try, so a retry never sends again to a recipient the
# smarthost accepted (unless the power failed between its 250 and the envelope's rewrite).
import gc
import sys
import time

from micropython import const

from . import outbox, unload

unload(outbox.__name__)  # kept by this module only: unloaded with it

# Seconds of the retry schedule (scaled by relay_time_scale, see config.py).
_FIRST_RETRY = const(300)
_MAX_RETRY = const(4000)
# Milliseconds until a message whose try ran short of the board's memory is tried again.
_SHORT_WAIT_MS = const(2000)
# Milliseconds between looks at the clock while it is not set (a board waiting for NTP).
_CLOCK_WAIT_MS = const(5000)
# Passes in a row that give way to client sessions before loading the SMTP client.
_GIVE_WAY = const(3)


def retry_delay(tries):
    """Seconds until the next try after `tries` failed ones."""
    delay = _FIRST_RETRY
    for _ in range(1, min(tries, 8)):
        delay *= 2
    return min(delay, _MAX_RETRY)


async def run(app):
    """One pass through the queue: sends every message that is due. Returns the milliseconds
    until the next is due, or None when the queue is empty."""
    try:
        return await _pass(app)
    finally:
        unload("pocketpost.smtpout")  # however the pass ended (a shortage, the card)
        unload(outbox.__name__)  # (put back for smtpout, which a shortage may have cut short)


async def _pass(app):
    store = app.store
    if not app.config["relay_host"] and not outbox.ids(store):
        return None  # nothing to relay, nor to repair (no queue folder is made)
    if not getattr(app, "relay_recovered", False):
        # The queue's repair after a power cut, once a boot; it takes this module's copy of
        # outbox.py (as smtpout does below) instead of loading a second one (~4.7 KB).
        sys.modules[outbox.__name__] = outbox
        from . import enqueue

        try:
            enqueue.recover(store, app.log)
        finally:
            enqueue = None
            unload("pocketpost.enqueue")
        app.relay_recovered = True
    config = app.config
    if config["relay_host"] and config["relay_security"] != "plain" and not _clock_set(app):
        # Certificates cannot be checked (nor the schedule kept) before the clock is set: the
        # queue waits, no try counted, and looks again in a few seconds.
        if not getattr(app, "relay_clock_waits", False):
            app.relay_clock_waits = True
            app.log.warn("relay", "waiting for the clock to be set (NTP): certificates cannot be checked before")
        return _CLOCK_WAIT_MS
    if getattr(app, "relay_clock_waits", False):
        app.relay_clock_waits = False
        app.log.info("relay", "the clock is set: the queue goes on")
    scale = config["relay_time_scale"]
    wait = None
    client = None
    context = None
    for qid in outbox.each(outbox.ids(store)):  # 4 octets a message (a list would grow with the queue)
        env = outbox.read(store, qid)
        if env is None:
            continue
        if not env.has_pending():
            app.relay_bounces = True  # its bounce is still to be made
            continue
        now = outbox.now_ms()
        if env.next > now:
            wait = _sooner(wait, env.next - now)
            continue
        if now - env.created > config["relay_lifetime"] * scale:
            reason = "expired after {} tries: {}".format(env.tries, env.error)
            for i in env.pending_places():
                env.set_state_at(i, outbox.BOUNCED, reason)
            _finish(app, env)
            continue
        window = getattr(app, "relay_window", None)
        if window is None or now - window[0] >= 60 * scale:
            window = app.relay_window = [now, 0]
        if window[1] >= config["relay_rate"]:
            wait = _sooner(wait, window[0] + 60 * scale - now)
            continue
        if client is None:
            # The SMTP client's code (~7 KB) is loaded only while no client session is open: a
            # session that came after the pass began goes first (the pass comes back in a
            # second, after they end; up to _GIVE_WAY times in a row: under endless sessions
            # it goes on).
            if app.sessions and getattr(app, "relay_gave_way", 0) < _GIVE_WAY:
                app.relay_gave_way = getattr(app, "relay_gave_way", 0) + 1
                return 1000
            app.relay_gave_way = 0
            # The TLS context first, while the heap has a block for it (~3 KB in one piece),
            # then the client's code; both serve the whole pass.
            if config["relay_host"] and config["relay_security"] != "plain":
                try:
                    context = _context(app)
                except MemoryError:
                    # No block for it now (a session's garbage, fragments): tried again in a
                    # second, no message's try counted.
                    app.relieve_memory()
                    app.relay_short = True  # the next pass starts relieved (App._relay)
                    app.log.warn("relay", "no memory for a TLS context now: the queue waits")
                    return 1000
        window[1] += 1
        short = False
        try:
            if client is None:
                # The SMTP client, for this pass; it takes this module's copy of outbox.py (kept
                # out of sys.modules, so that it goes with this module) instead of loading a
                # second one (~3 KB).
                sys.modules[outbox.__name__] = outbox
                from . import smtpout as client

            await client.send(app, env, context)
        except MemoryError:
            app.relieve_memory()
            app.relay_short = True  # the next pass starts relieved (App._relay)
            env.error = "not enough memory"
            short = True
        gc.collect()
        if not env.has_pending():
            _finish(app, env)
            continue
        if short:  # the board's shortage, not the smarthost's: again soon, no try counted
            env.next = outbox.now_ms() + _SHORT_WAIT_MS
        else:
            env.tries += 1
            env.next = outbox.now_ms() + retry_delay(env.tries) * scale
        app.log.warn("relay", "{} deferred ({} tries): {}".format(qid, env.tries, env.error))
        outbox.write(store, env)
        wait = _sooner(wait, env.next - outbox.now_ms())
    client = None
    return wait  # (mail queued during the pass has asked for the next one: app.relay_now)


def _sooner(wait, ms):
    ms = max(0, ms)
    return ms if wait is None or ms < wait else wait


def _finish(app, env):
    # Every recipient is delivered or bounced: the message goes, or waits for its bounce
    # (bounce.py, loaded after this pass).
    if any(r[0] == outbox.BOUNCED for r in env.rcpts):
        outbox.write(app.store, env)
        app.relay_bounces = True
    else:
        outbox.remove(app.store, env.id)
    # The first three recipients by name (100 would need a block of ~3 KB), the rest counted.
    sent = sum(1 for r in env.rcpts if r[0] == outbox.DELIVERED)
    named = ", ".join("{} {}".format(env.rcpts.address(i), "sent" if env.rcpts.state(i) == outbox.DELIVERED else "bounced") for i in range(min(3, len(env.rcpts))))
    more = len(env.rcpts) - 3
    if more > 0:
        named += " and {} more ({} sent in all, {} bounced)".format(more, sent, len(env.rcpts) - sent)
    app.log.info("relay", "{} done: {}".format(env.id, named))


def _clock_set(app):
    return time.gmtime()[0] >= 2024 and not getattr(app, "relay_clock_unset", False)


def _context(app):
    # The context made at boot or at the CA's installation (app.relay_context), else a new one;
    # or the reason there is none (text).
    if time.gmtime()[0] < 2024:
        return "the clock is not set (waiting for NTP): certificates cannot be checked"
    context = getattr(app, "relay_context", None)
    if context is None:
        gc.collect()
        context = outbox.client_context(app.flash)
        if context is None:
            return "no CA certificate installed to verify the smarthost (pocketpost relay ca install)"
        app.relay_context = context  # kept for the next passes
    return context
