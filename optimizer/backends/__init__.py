"""Backends build an Engine from a model and a candidate; see `base.py` for the protocols."""
