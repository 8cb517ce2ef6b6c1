"""The interop suite: Quiver's sender against real receiving MTAs (see conftest.py)."""
