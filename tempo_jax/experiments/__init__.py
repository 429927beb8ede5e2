"""Experiment tooling above the loop.

Sweep grids, run comparison, the oracle-flip curve and `tempo-jax eval`.
"""
