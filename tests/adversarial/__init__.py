"""Hostile candidate programs and the proof that the sandbox contains each of them."""
