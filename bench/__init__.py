"""Soko Live benchmark: the hub against Node socket.io, stock python-socketio and raw websockets.

Run from the repository root: ``python -m bench --quick`` (under 3 minutes, proves the harness) or
``python -m bench --full``. Not installed, and nothing imports it.
"""
