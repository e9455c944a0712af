"""The slave role."""
