"""In-store IoT gateway: MQTT shelf sensors to stock events. Not built yet: see issue 6."""
