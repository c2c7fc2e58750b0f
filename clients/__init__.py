"""Shopper and driver apps (Kivy) over a shared offline-first sync engine. Not built yet: see issue 5."""
