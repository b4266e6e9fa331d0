"""Test-suite configuration: deterministic hypothesis runs (same examples on every machine)."""

from hypothesis import HealthCheck, settings

settings.register_profile("deterministic", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("deterministic")
