"""Generation: pipelines, the sampler table, attaching trained artifacts."""
