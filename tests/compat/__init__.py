"""Ports of published torchkeras 1.x and Keras code (a package, so its conftest does not shadow tests/conftest.py)."""
