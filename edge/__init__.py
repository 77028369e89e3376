"""edgewatch edge: everything that runs on a device. Never imports torch, models or cloud."""
