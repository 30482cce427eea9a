"""Adapters that hook tmpi rules into native training loops.

One module per framework; importing this package imports no framework:

* :mod:`tmpi_adapters.keras` — the Keras 3 callback ``TMPISync``.
"""

__all__ = []
