"""Backends build an Engine from a model and a candidate: one package per backend (its settings,
spec and builder), `base.py` for the protocols and `registry.py` for the table of backends."""
