"""HardEdit-style cases (cases.json) and their suite."""
