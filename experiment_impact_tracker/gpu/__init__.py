"""GPU facts about the machine an experiment runs on (NVML), for run records and parity checks."""
