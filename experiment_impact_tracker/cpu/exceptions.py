"""experiment-impact-tracker 0.1's ``cpu.exceptions`` module, kept so that its imports work: its exception is now
``cpu.common.CPUAttributeAssertionError`` (an ImpactTrackerError and an AssertionError)."""

from experiment_impact_tracker.cpu.common import CPUAttributeAssertionError

__all__ = ["CPUAttributeAssertionError"]
