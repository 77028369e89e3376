"""Local development only: a broker stack on loopback (Mosquitto, Kafka, PostgreSQL), the demo
that runs the whole pipeline on it, and the commands that drive them (``edgewatch stack``,
``edgewatch demo``). Nothing in :mod:`edge`, :mod:`models` or :mod:`cloud`'s production code
imports it; tests and benchmarks do."""
