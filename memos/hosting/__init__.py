"""Hosting the kernel on Ray. Only this package imports ray (lazily)."""
