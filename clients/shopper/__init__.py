"""The shopper app (Kivy): ``soko shopper --hub URL --token ...``; see :mod:`clients.shopper.app`."""
