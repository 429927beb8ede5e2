"""Counting compiles in tests: how a test shows that a bad input fails before any XLA work, or
that a second call reuses the first one's executable."""

import jax

_LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"


class CompileCounter:
    """Counts lowerings to XLA (every compile starts with one, persistent-cache hit or not).

    A context manager: `with CompileCounter() as counter: ...` then `counter.count`.
    """

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == _LOWERING_EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)
