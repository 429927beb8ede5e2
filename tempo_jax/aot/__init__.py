"""Ahead-of-time compile reports for pod recipes.

Per-chip memory, FLOPs and the rollout engine's time estimates (`tempo-jax compile`).
"""
