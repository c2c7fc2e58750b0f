"""The driver app (Kivy): ``soko driver --hub URL --token ...``; see :mod:`clients.driver.app`."""
