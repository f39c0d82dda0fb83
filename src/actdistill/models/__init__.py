"""The reference VLA teacher and the pieces it is built from."""
