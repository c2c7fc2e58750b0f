"""Transport adapters: the only package that imports socketio, engineio and aiohttp handlers."""
