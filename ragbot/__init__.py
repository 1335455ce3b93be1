"""ragbot: local, private question answering over your documents, with citations.

Importing this package is cheap: no torch, no models. Models load on first use (``warm_up``).
"""

__version__ = "0.1.0"
