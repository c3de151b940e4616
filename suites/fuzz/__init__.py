"""Hypothesis fuzzing of where the subject sits in the prompt."""
