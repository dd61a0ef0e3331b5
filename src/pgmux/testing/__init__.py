"""Throwaway infrastructure shared by the test suite, bench/ and `pgmux demo`, kept out of the runtime:
PostgreSQL clusters (`cluster.py`), the OS user that runs them (`osuser.py`), processes, ports and
pooler config files (`procs.py`), certificates (`certs.py`). pgmux itself never imports it, except
`pgmux demo`."""
