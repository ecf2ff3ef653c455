"""Benchmarks that ship with tunelab: `tunelab bench speed` (training step, side by side with the reference)."""
