"""Models: one module per architecture (``relaxbench.models.NAME`` defines ``build`` and ``FAMILY``).

Modules whose names start with ``_`` hold shared layers and are not models.
"""
