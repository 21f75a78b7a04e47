# A fake of the esp32 port's network module (docs.micropython.org: network, network.WLAN;
# ports/esp32/network_wlan.c and modnetwork_globals.h for the status values and the rejoining
# behaviour): one station interface joining the access point /host/hardware.json describes,
# {"wifi": {"ssid", "password", "ip", "rssi", "join_ms", "down", "fail": [reason, ...]}}.
# "down" switches the access point off (a joined station loses it with a beacon time-out);
# "fail" makes the first joins fail with those ESP-IDF reasons; "hang" hangs the caller (a
# firmware stuck in a driver), which only the watchdog ends.
import time

import _hardware

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
# ESP-IDF's wifi_err_reason_t values, as the esp32 port passes them through.
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
_ASSOC_LEAVE = 8  # the reason a disconnect() leaves behind

_hostname = ["espressif"]


def hostname(name=None):
    if name is None:
        return _hostname[0]
    if not isinstance(name, str):
        raise TypeError("can't convert to str")
    if len(name) > 32:
        raise ValueError("hostname too long")
    _hostname[0] = name
    _hardware.event("hostname {}".format(name))


class _Station:
    def __init__(self):
        self.is_active = False
        self.ssid = self.key = None
        self.requested = False  # connect() called and no disconnect() since: the port rejoins
        self.connected = False
        self.reason = 0
        self.reconnects_conf = 0  # 0: rejoin for ever
        self.reconnects = 0
        self.attempt_end = None  # ticks_ms when the join in progress completes
        self.attempt_reason = 0  # 0: it succeeds
        self.joins = 0

    def _ap(self):
        wifi = _hardware.part("wifi")
        if _hardware.state().get("hang"):
            while True:  # stuck: nothing runs until the watchdog resets the chip
                pass
        return wifi

    def _start_attempt(self):
        ap = self._ap()
        fail = ap.get("fail", [])
        if self.joins < len(fail):
            reason = fail[self.joins]
        elif ap.get("down") or ap.get("ssid") != self.ssid:
            reason = STAT_NO_AP_FOUND
        elif ap.get("password", "") != (self.key or ""):
            reason = STAT_WRONG_PASSWORD
        else:
            reason = 0
        self.joins += 1
        self.attempt_reason = reason
        self.attempt_end = time.ticks_add(time.ticks_ms(), ap.get("join_ms", 100))

    def _update(self):
        ap = self._ap()
        if self.connected and (ap.get("down") or ap.get("ssid") != self.ssid):
            self.connected = False
            self._disconnected(STAT_BEACON_TIMEOUT)
        if self.attempt_end is not None and time.ticks_diff(time.ticks_ms(), self.attempt_end) >= 0:
            self.attempt_end = None
            if self.attempt_reason == 0:
                self.connected = True
                self.reason = 0
                _hardware.event("wifi joined {}".format(self.ssid))
            else:
                self._disconnected(self.attempt_reason)

    def _disconnected(self, reason):
        """The port's STA_DISCONNECTED handler: note the reason, and rejoin while allowed."""
        self.reason = reason
        _hardware.event("wifi disconnected reason={}".format(reason))
        if self.requested:
            if self.reconnects_conf:
                self.reconnects += 1
                if self.reconnects >= self.reconnects_conf:
                    return
            self._start_attempt()

    # ---- the WLAN interface

    def active(self, is_active=None):
        if is_active is None:
            return self.is_active
        self.is_active = bool(is_active)
        if not self.is_active:
            self.connected = self.requested = False
            self.attempt_end = None
        return self.is_active

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self.is_active:
            raise OSError("Wifi Not Started")
        if ssid is not None:
            self.ssid = ssid
        if key is not None:
            self.key = key
        _hardware.event("wifi connect {}".format(self.ssid))
        self.reconnects = 0
        self.requested = True
        self._start_attempt()

    def disconnect(self):
        self.requested = False
        self.attempt_end = None
        if self.connected or self.reason != _ASSOC_LEAVE:
            self.connected = False
            self.reason = _ASSOC_LEAVE

    def isconnected(self):
        self._update()
        return self.connected

    def status(self, param=None):
        self._update()
        if param is None:
            if self.connected:
                return STAT_GOT_IP
            if self.requested and (self.reconnects_conf == 0 or self.reconnects < self.reconnects_conf):
                return STAT_CONNECTING
            return self.reason or STAT_IDLE
        if param == "rssi":
            if not self.connected:
                raise OSError("Wifi Not Connected")
            return self._ap().get("rssi", -60)
        raise ValueError("unknown status param")

    def ifconfig(self, config=None):
        if config is not None:
            raise OSError("static addresses are not faked")
        if not self.connected:
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return (self._ap().get("ip", "127.0.0.1"), "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kwargs):
        if args and kwargs:
            raise TypeError("either pos or kw args are allowed")
        if args:
            if args[0] == "mac":
                return b"\x24\x0a\xc4\x12\x34\x56"
            if args[0] in ("ssid", "essid"):
                return self.ssid or ""
            if args[0] == "reconnects":
                return self.reconnects_conf
            if args[0] == "dhcp_hostname":
                return _hostname[0]
            raise ValueError("unknown config param")
        for key, value in kwargs.items():
            if key == "reconnects":
                self.reconnects_conf = max(0, value)
            elif key == "dhcp_hostname":
                hostname(value)
            elif key not in ("txpower", "pm"):
                raise ValueError("unknown config param")


_sta = _Station()


def WLAN(interface_id=STA_IF):
    if interface_id != STA_IF:
        raise ValueError("only the station interface is faked")
    return _sta
