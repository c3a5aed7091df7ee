"""Benchmarks that measure memos on public data sets (``memos bench ...``). Not tests: they report numbers."""
