"""Fleet intelligence in the processor: peer outliers and silent devices (docs/fleet.md)."""
