"""In-store IoT gateway: MQTT shelf sensors in, stock and sensor-health events out to the hub.

Modules: :mod:`edge.config` (the store's TOML file), :mod:`edge.sensors` (readings to
unit counts, smoothing, sensor health; sans-I/O), :mod:`edge.mqtt` (the broker link),
:mod:`edge.outbox` (the SQLite store-and-forward queue), :mod:`edge.uplink` (the hub
link), :mod:`edge.gateway` (wires them), :mod:`edge.simulate` (a store for demos and
tests), :mod:`edge.cli` (``soko edge``).
"""
