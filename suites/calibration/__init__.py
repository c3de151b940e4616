"""Per-model gate calibrations (`editguard calibrate --model NAME`), shipped beside the mined lists."""
