"""Numeric primitives shared by every layer (numpy only)."""
