"""pgmux: a PostgreSQL connection pooler and load balancer, drop-in compatible with PgBouncer."""

__version__ = "0.1.0"
