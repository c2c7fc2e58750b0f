"""The Soko Live hub: Socket.IO fan-out of chat, notifications and order updates."""
