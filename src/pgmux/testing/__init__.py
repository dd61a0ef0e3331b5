"""Throwaway test infrastructure shared by the test suite, bench/ and `pgmux demo`: certificates so far
(the PostgreSQL clusters are still in runtime/cluster.py)."""
