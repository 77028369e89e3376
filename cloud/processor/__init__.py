"""The cloud stream processor: anomaly events from Kafka into incidents, alerts and a store.

Modules: ``config`` (typed TOML), ``store``/``backends``/``schema`` (SQLite or PostgreSQL),
``incidents`` (device incidents), ``fleet`` (site-wide incidents), ``drift`` (drift signal),
``pipeline`` (one batch into the store), ``alerts`` (outboxes), ``consumer`` (the Kafka loop),
``archive`` (telemetry to Parquet), ``metrics``. Nothing is imported here: no work at import.
"""
