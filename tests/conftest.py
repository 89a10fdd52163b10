"""Shared pytest/hypothesis configuration.

Profiles: "ci" (the default: modest example counts so the suite stays fast on 2 cores,
no example database so every run draws fresh, independent examples) and "dev" (more
examples). Pick one with HYPOTHESIS_PROFILE=dev."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=30, deadline=None, database=None, print_blob=True, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
