"""Soko Live wire protocol: sans-I/O payload types, names, ids, error codes and codecs.

Nothing in this package performs I/O or imports an event loop, a transport or a
database driver. The hub, the client apps and the edge gateway all share it.
"""

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change to a payload or an event's meaning."""
