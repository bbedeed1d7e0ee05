"""Noise schedule, training targets and samplers."""
