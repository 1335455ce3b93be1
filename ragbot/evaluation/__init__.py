"""Offline evaluation of ragbot: retrieval, answers, refusals, citations and latency.

``metrics`` holds the pure scoring functions (no models, no I/O), so every number in a report
can be checked against a hand-made case in the unit tests.
"""
