# Dates in mail headers (RFC 5322 §3.3): the Received trace fields of delivery and collection,
# and a bounce's Date. A module of its own: the SMTP session's code, the collector and the
# bounces need it, and none of them stays loaded for the others.
import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_date(seconds):
    """`seconds` since the epoch as an RFC 5322 date-time, in UTC."""
    t = time.gmtime(seconds)
    return "{}, {} {} {} {:02d}:{:02d}:{:02d} +0000".format(
        _DAYS[t[6]], t[2], _MONTHS[t[1] - 1], t[0], t[3], t[4], t[5]
    )
