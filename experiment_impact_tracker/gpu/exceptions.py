"""experiment-impact-tracker 0.1's ``gpu.exceptions`` module, kept so that its imports work: its exception is now
``gpu.nvidia.GPUAttributeAssertionError`` (an ImpactTrackerError and an AssertionError)."""

from experiment_impact_tracker.gpu.nvidia import GPUAttributeAssertionError

__all__ = ["GPUAttributeAssertionError"]
