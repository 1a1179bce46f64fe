"""Frame sources. See `base.py` for the contract."""
