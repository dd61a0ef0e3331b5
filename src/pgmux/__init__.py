"""pgmux: a PostgreSQL connection pooler and load balancer, drop-in compatible with PgBouncer."""

__version__ = "0.1.0"
PGBOUNCER_VERSION = "1.25.0"  # the PgBouncer release whose behaviour and admin console pgmux follows
# What SHOW VERSION answers and `pgmux -V` prints: one string. Monitoring reads a version from it:
# pgbouncer_exporter exports the whole string as a label, others match `PgBouncer (\d+\.\d+\.\d+)` or
# the first X.Y.Z, which must stay PgBouncer's (their SHOW column sets depend on it). pgmux's own
# version follows in parentheses.
VERSION_STRING = f"PgBouncer {PGBOUNCER_VERSION} (pgmux {__version__})"
