# SASL PLAIN (RFC 4616) and LOGIN, shared by POP3 AUTH (RFC 5034) and SMTP AUTH (RFC 4954).
# The protocols differ only in how a challenge is sent, which they pass in.
import binascii

MECHANISMS = ("PLAIN", "LOGIN")
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
# base64 of "Username:" and "Password:", the prompts clients of LOGIN expect.
_LOGIN_USER = "VXNlcm5hbWU6"
_LOGIN_PASSWORD = "UGFzc3dvcmQ6"


class Cancelled(Exception):
    """The client answered a challenge with "*"."""


class Malformed(Exception):
    """The client's response is not valid base64 or not a valid message of the mechanism."""


def parse_command(arg):
    """(mechanism, initial response or None) from the argument of an AUTH command, or None when
    it names no mechanism we offer."""
    parts = arg.split()
    if not 0 < len(parts) <= 2 or parts[0].upper() not in MECHANISMS:
        return None
    return parts[0].upper(), parts[1] if len(parts) == 2 else None


def decode(text):
    """Decodes a base64 response ("=" is the empty response); raises Malformed."""
    if text == "=":
        return b""
    data = text.encode()
    if not data or len(data) % 4:
        raise Malformed()
    for c in data:
        if c not in _B64:
            raise Malformed()
    pad = data.find(b"=")
    if pad >= 0 and (pad < len(data) - 2 or data[pad:] not in (b"=", b"==")):
        raise Malformed()
    return binascii.a2b_base64(data)


async def credentials(mechanism, initial, challenge):
    """Runs the exchange; returns (user name, password bytes), user None when the message
    asks to act as another user (authorization identity differs), which we never allow.

    `initial` is the initial response (str) or None; `challenge(b64)` sends a challenge and
    returns the client's reply line (str), or None for a line too long."""
    if mechanism == "PLAIN":
        parts = decode(await _answer(initial, challenge, "")).split(b"\x00")
        if len(parts) != 3:
            raise Malformed()
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            return None, password
        return _text(authcid), password
    if initial is None:
        initial = await _ask(challenge, _LOGIN_USER)
    user = _text(decode(initial))
    password = decode(await _ask(challenge, _LOGIN_PASSWORD))
    return user, password


async def _answer(initial, challenge, prompt):
    if initial is not None:
        if initial == "*":
            raise Cancelled()
        return initial
    return await _ask(challenge, prompt)


async def _ask(challenge, prompt):
    try:
        reply = await challenge(prompt)
    except UnicodeError:  # 8-bit bytes, which base64 never has
        raise Malformed()
    if reply is None:
        raise Malformed()
    if reply == "*":
        raise Cancelled()
    return reply


def _text(data):
    try:
        return data.decode()
    except UnicodeError:
        raise Malformed()
