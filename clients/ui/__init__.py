"""What the shopper and driver apps share: widgets, the map, the App base and CLI helpers.

Only :mod:`clients.ui.text` and :mod:`clients.ui.cli` import without Kivy.
"""
