"""Benchmarks behind `memos bench ...`: each writes JSON, a markdown table and (where useful) a PNG plot."""
