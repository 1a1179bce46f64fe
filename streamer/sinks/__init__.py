"""Frame sinks. See `base.py` for the contract."""
