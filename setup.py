"""Only the compiled parts of pgmux live here; everything else is in pyproject.toml.

- pgmux._speedups does the per-query text scans of the forwarding path in C (see its header). It is
  optional: where it cannot be compiled, pgmux runs the pure-Python version of the same scans, and
  tests/unit/test_speedups.py fails, so a machine that should have it notices.
- pgmux._arenas gives back the empty pools of CPython's small-object arenas after a storm of clients
  (runtime/memtrim.py). Optional in the same way; tests/unit/test_arenas.py fails where it is missing.
- pgmux._tlspump and pgmux._streams (C): the records of an open TLS connection, and the sockets of
  clients and pooled servers read and written without uvloop's transports (net/tlsconn.py,
  net/streams.py). Optional in the same way; their tests fail where they are missing.
- COMPILED below are the modules every transaction and every login runs through. mypyc compiles
  them, from the same Python source, to C extension modules; their type annotations become C fields
  and direct calls. The .py files stay the definition: `PGMUX_PURE=1` at install time skips this
  step, and tests/conftest.py refuses to run when a compiled module is older than its source
  (rebuild with `python3 setup.py build_ext --inplace`).
"""

import os

from setuptools import Extension, setup

COMPILED = [
    "src/pgmux/session/client.py",  # the two relays
    "src/pgmux/session/server.py",
    "src/pgmux/session/client_login.py",  # the client's startup and login (split from client.py)
    "src/pgmux/session/passing.py",  # long messages streamed through, both relays
    "src/pgmux/session/hub.py",  # the hub port: a native class, so sessions call App through its vtable
    "src/pgmux/runtime/app.py",  # the hub, in layers (one native class chain: all compiled, calls direct):
    "src/pgmux/runtime/core.py",  # its state
    "src/pgmux/runtime/servers.py",  # server connects and logins; servers back from clients, to a waiter
    "src/pgmux/runtime/handoff.py",  # the hand-off of servers, once per transaction
    "src/pgmux/runtime/logins.py",  # client logins
    "src/pgmux/runtime/admission.py",  # ... their counts per database and user (SharedAdmission extends it)
    "src/pgmux/metrics/events.py",  # ... their login times (ClosingEvents extends it)
    "src/pgmux/runtime/welcome.py",  # ... and their welcome
    "src/pgmux/pooling/pool.py",  # the pool core
    "src/pgmux/pooling/histogram.py",  # metrics' per-transaction histograms (a native call per observation)
    "src/pgmux/session/states.py",  # the states they compare with, as C globals
    "src/pgmux/protocol/codec.py",  # the read buffer both relays check on every read
    "src/pgmux/protocol/scans.py",  # the one header walk (codec.scan's), and the C scans' definitions
    "src/pgmux/session/pipeline.py",  # extended-protocol batches: statements renamed, replies counted
    "src/pgmux/session/fastpath.py",  # ... the chunks that go as they are, or with Binds renamed only
    "src/pgmux/session/entries.py",  # ... what a server owes, queued per request (a native class)
    "src/pgmux/session/replies.py",  # ... the replies put in the client's order
    "src/pgmux/session/watch.py",  # ... session effects through the extended protocol
    "src/pgmux/session/shapecheck.py",  # ... a statement's shape checked before its Bind
    "src/pgmux/session/prepared.py",  # the statement names of each client and server
    "src/pgmux/protocol/messages.py",  # the messages pgmux builds itself (login, errors, its own queries)
    "src/pgmux/session/params.py",  # a client's startup parameters, brought to each server
    "src/pgmux/protocol/auth.py",  # the login exchanges, both ways
    "src/pgmux/net/tlsconn.py",  # TLS: every read and write of a TLS connection
    "src/pgmux/runtime/logdirect.py",  # log lines (two per login: log_connections, log_disconnections)
]

VIEWS = ["src/pgmux/_views.h"]  # (depends: a change to it rebuilds both, and sdists carry it)
ext_modules = [Extension("pgmux._speedups", ["src/pgmux/_speedups.c"], depends=VIEWS, optional=True),
               Extension("pgmux._arenas", ["src/pgmux/_arenas.c"], optional=True),
               Extension("pgmux._tlspump", ["src/pgmux/_tlspump.c"], depends=VIEWS, optional=True),
               Extension("pgmux._streams", ["src/pgmux/_streams.c"], optional=True)]
if os.environ.get("PGMUX_PURE", "") in ("", "0"):
    from mypyc.build import mypycify

    # One group, its shared library inside the package (pgmux/_native__mypyc*.so), not at top level.
    ext_modules += mypycify(COMPILED, opt_level="3", group_name="pgmux._native")

setup(ext_modules=ext_modules)
