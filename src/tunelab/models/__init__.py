"""Model families: loading a model reference and the per-family training maths."""
