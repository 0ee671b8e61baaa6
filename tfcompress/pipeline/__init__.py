"""Whole runs built from the layers below: `recipe` (``compress``), `auto` (``auto_compress``), `demo`, `cli`."""
