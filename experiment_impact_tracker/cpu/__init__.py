"""CPU facts about the machine an experiment runs on (py-cpuinfo), for run records and parity checks."""
