"""The master role."""
