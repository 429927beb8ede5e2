"""Run configuration: the defaults of every field, their validation and the AIME recipes."""
