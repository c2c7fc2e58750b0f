"""Colours and fonts of both apps (RGBA tuples, as Kivy takes them). Kivy-free."""

from __future__ import annotations

SYMBOL_FONT = "DejaVuSans.ttf"
"""Kivy's bundled DejaVu Sans (found in Kivy's font path): has the check marks, hearts and
arrows that Roboto lacks."""

PRIMARY = (0.059, 0.463, 0.431, 1)  # teal 700
BACKGROUND = (0.961, 0.961, 0.957, 1)
SURFACE = (1, 1, 1, 1)
TEXT = (0.110, 0.098, 0.090, 1)
MUTED = (0.341, 0.325, 0.306, 1)
BADGE = (0.863, 0.149, 0.149, 1)
ACCENT = (0.918, 0.345, 0.047, 1)

PHASE_COLORS = {
    "offline": (0.471, 0.443, 0.424, 1),
    "connecting": (0.851, 0.467, 0.024, 1),
    "syncing": (0.145, 0.388, 0.922, 1),
    "live": (0.086, 0.639, 0.290, 1),
}
MARK_COLORS = {
    "sending": (0.60, 0.58, 0.56, 1),
    "not sent": BADGE,
    "delivered": (0.90, 0.97, 0.95, 1),
    "read": (0.75, 0.88, 1.0, 1),
}
MARK_SYMBOLS = {"sending": "\u25f7", "not sent": "\u2717", "delivered": "\u2713", "read": "\u2713\u2713"}
