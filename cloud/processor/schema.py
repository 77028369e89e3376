"""The store's schema, as numbered migrations that the processor applies at start.

One list for both backends; ``{real}``, ``{bigint}`` and ``{blob}`` become the dialect's types.
A migration is applied once, in a transaction, and recorded in ``schema_version``; the
processor refuses a store whose version is newer than the code it runs.
"""

from __future__ import annotations

TYPES = {
    "sqlite": {"real": "REAL", "bigint": "INTEGER", "blob": "BLOB"},
    "postgres": {"real": "DOUBLE PRECISION", "bigint": "BIGINT", "blob": "BYTEA"},
}

Migration = list[str] | dict[str, list[str]]  # statements for both dialects, or per dialect

MIGRATIONS: list[Migration] = [
    [  # 1: events, incidents, alerts, dead letters, partition progress, device state
        """CREATE TABLE events (
            event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, agent_id TEXT NOT NULL,
            window_start {real} NOT NULL, window_end {real} NOT NULL, score {real} NOT NULL, threshold {real} NOT NULL,
            payload TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, model_sha256 TEXT NOT NULL,
            detected_at {real} NOT NULL, topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset {bigint} NOT NULL,
            late INTEGER NOT NULL, ingested_at {real} NOT NULL)""",
        "CREATE INDEX events_device_time ON events (device_id, window_end)",
        """CREATE TABLE incidents (
            incident_id TEXT PRIMARY KEY, kind TEXT NOT NULL, site TEXT NOT NULL, device_id TEXT NOT NULL,
            device_ids TEXT NOT NULL, opened_at {real} NOT NULL, closed_at {real}, last_event_at {real} NOT NULL,
            event_count INTEGER NOT NULL, max_score {real} NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL,
            statistic TEXT NOT NULL, observed {real}, expected {real}, detail TEXT NOT NULL,
            label TEXT, labelled_at {real}, updated_at {real} NOT NULL)""",
        "CREATE INDEX incidents_kind_site ON incidents (kind, site, closed_at)",
        "CREATE INDEX incidents_opened ON incidents (opened_at)",
        """CREATE TABLE alerts (
            alert_id TEXT PRIMARY KEY, incident_id TEXT NOT NULL, kind TEXT NOT NULL, action TEXT NOT NULL,
            event_time {real} NOT NULL, payload TEXT NOT NULL, created_at {real} NOT NULL, published_at {real})""",
        "CREATE INDEX alerts_unpublished ON alerts (published_at, created_at, event_time)",
        """CREATE TABLE deadletters (
            topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset {bigint} NOT NULL,
            field TEXT NOT NULL, reason TEXT NOT NULL, payload {blob}, created_at {real} NOT NULL, published_at {real},
            PRIMARY KEY (topic, kafka_partition, kafka_offset))""",
        "CREATE INDEX deadletters_unpublished ON deadletters (published_at, created_at)",
        """CREATE TABLE partitions (
            topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, version {bigint} NOT NULL,
            watermark {real}, next_offset {bigint} NOT NULL, updated_at {real} NOT NULL,
            PRIMARY KEY (topic, kafka_partition))""",
        """CREATE TABLE device_state (
            topic TEXT NOT NULL, device_id TEXT NOT NULL, kafka_partition INTEGER NOT NULL, state TEXT NOT NULL,
            PRIMARY KEY (topic, device_id))""",
        "CREATE INDEX device_state_partition ON device_state (topic, kafka_partition)",
    ],
    {  # 2: PostgreSQL only. Keys compare byte by byte (memcmp, as SQLite's BINARY does), not by the database
       # locale's strcoll; and rows rewritten every batch get free space on their page for HOT updates
        "postgres": [
            'ALTER TABLE events ALTER COLUMN event_id TYPE TEXT COLLATE "C"',
            'ALTER TABLE events ALTER COLUMN device_id TYPE TEXT COLLATE "C"',
            "ALTER TABLE device_state SET (fillfactor = 50)",
            "ALTER TABLE incidents SET (fillfactor = 70)",
        ],
        "sqlite": [],
    },
    # 3: an event row keeps only what queries and de-duplication use; the rest is in its payload (the event as
    # received), so a row costs fewer bound values and bytes (the insert was most of the processor's store time)
    [f"ALTER TABLE events DROP COLUMN {c}" for c in
     ("agent_id", "window_start", "threshold", "model_name", "model_version", "model_sha256", "detected_at")],
    [  # 4: rollouts in waves (cloud.rollout): agents' reports and exposure, model statuses, rollouts, members, decisions
        """CREATE TABLE agent_reports (
            agent_id TEXT PRIMARY KEY, group_name TEXT NOT NULL, model_name TEXT NOT NULL, live_version TEXT NOT NULL,
            devices INTEGER NOT NULL, info TEXT, reported_at {real} NOT NULL)""",
        """CREATE TABLE agent_exposure (
            agent_id TEXT NOT NULL, model_version TEXT NOT NULL, device_hours {real} NOT NULL,
            PRIMARY KEY (agent_id, model_version))""",
        """CREATE TABLE model_statuses (
            agent_id TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, action TEXT NOT NULL,
            reason TEXT NOT NULL, at {real} NOT NULL, PRIMARY KEY (agent_id, model_name, model_version, action))""",
        """CREATE TABLE rollouts (
            rollout_id TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, previous_version TEXT NOT NULL,
            group_name TEXT NOT NULL, waves TEXT NOT NULL, state TEXT NOT NULL, started_at {real} NOT NULL,
            wave_started_at {real} NOT NULL, updated_at {real} NOT NULL)""",
        "CREATE INDEX rollouts_name ON rollouts (name, started_at)",
        """CREATE TABLE rollout_members (
            rollout_id TEXT NOT NULL, agent_id TEXT NOT NULL, wave {real} NOT NULL, skipped TEXT, at {real} NOT NULL,
            PRIMARY KEY (rollout_id, agent_id))""",
        """CREATE TABLE rollout_exposure (
            rollout_id TEXT NOT NULL, agent_id TEXT NOT NULL, model_version TEXT NOT NULL, device_hours {real} NOT NULL,
            PRIMARY KEY (rollout_id, agent_id, model_version))""",
        """CREATE TABLE rollout_decisions (
            rollout_id TEXT NOT NULL, at {real} NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL)""",
        "CREATE INDEX rollout_decisions_rollout ON rollout_decisions (rollout_id, at)",
    ],
    [  # 5: fleet watch (cloud.fleetwatch): peer-outlier and silence state per device, retired devices, progress
        """CREATE TABLE peer_state (
            device_id TEXT PRIMARY KEY, group_key TEXT NOT NULL, state TEXT NOT NULL, updated_at {real} NOT NULL)""",
        """CREATE TABLE silence_state (
            device_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, state TEXT NOT NULL, updated_at {real} NOT NULL)""",
        """CREATE TABLE retired_devices (
            device_id TEXT PRIMARY KEY, retired_at {real} NOT NULL, reason TEXT NOT NULL)""",
        """CREATE TABLE fleetwatch_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    ],
    [  # 6: escalated windows with the cloud's verdict (cloud.processor.escalation); the verdict on the event; dismissed
       # events counted on their incident; incident alerts held for verdicts (gate: held, released, suppressed)
        """CREATE TABLE escalations (
            escalation_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, agent_id TEXT NOT NULL, event_id TEXT NOT NULL,
            window_end {real} NOT NULL, edge_model TEXT NOT NULL, edge_ratio {real} NOT NULL, cloud_model TEXT NOT NULL,
            cloud_ratio {real} NOT NULL, verdict TEXT NOT NULL, disagreement {real} NOT NULL, payload TEXT NOT NULL,
            label TEXT, labelled_at {real}, scored_at {real} NOT NULL)""",
        "CREATE INDEX escalations_queue ON escalations (disagreement)",
        "CREATE INDEX escalations_event ON escalations (event_id)",
        "CREATE INDEX escalations_device ON escalations (device_id, window_end)",
        "ALTER TABLE events ADD COLUMN verdict TEXT",
        "ALTER TABLE incidents ADD COLUMN dismissed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE alerts ADD COLUMN gate TEXT",
        "CREATE INDEX alerts_gate ON alerts (gate, created_at)",
    ],
]


def statements(dialect: str, version: int) -> list[str]:
    """The SQL of migration ``version`` (1-based) for ``dialect``."""
    migration = MIGRATIONS[version - 1]
    return [s.format(**TYPES[dialect]) for s in (migration[dialect] if isinstance(migration, dict) else migration)]
