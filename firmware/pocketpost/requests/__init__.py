# The console's requests (docs/console-protocol.md), one module per area: the console
# (console.py) loads the module of a request for that request and unloads it after, so no
# handler's code stays in the heap between requests.
