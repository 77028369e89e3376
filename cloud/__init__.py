"""edgewatch cloud: stream processor, registry, retraining jobs and dev tooling."""
