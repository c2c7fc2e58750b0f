"""Shopper and driver apps (Kivy, in ``shopper`` and ``driver``, widgets in ``ui``) over the Kivy-free
offline-first sync engine in ``common``."""
