"""Run configuration: the defaults of every field, the typed run settings the loop reads (with
their checks), the remaining validation and the AIME recipes."""
