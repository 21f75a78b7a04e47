# pocketpost: a POP3 and SMTP mail appliance for MicroPython boards.
VERSION = "0.1.0"
