"""The TEMPO loop: one outer loop that alternates critic recalibration (E-step) and policy
refinement (M-step) for TEMPO and every baseline, with its phases, evaluation, rollout journal and
checkpoints. Configuration lives below it in `tempo_jax.config`; tools that drive or read runs
(sweeps, comparisons, `tempo-jax eval`, compile reports) live above it in
`tempo_jax.experiments` and `tempo_jax.aot`.
"""
