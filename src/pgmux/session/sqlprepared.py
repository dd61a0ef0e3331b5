"""SQL-level prepared statements (PREPARE / EXECUTE / DEALLOCATE) under transaction pooling.

EXECUTE names its statement in SQL text, so unlike protocol-level statements (session/prepared.py)
these cannot be renamed: a server must hold the client's statement under the client's own name. So
each client keeps its statements as the PREPARE text that recreates them (`definition`), and each
server connection remembers which definition it holds under each name (`server.sql`), whichever
client prepared it there.

Before a statement that names one (PREPARE, EXECUTE, EXPLAIN EXECUTE, CREATE TABLE AS EXECUTE,
DEALLOCATE), pgmux brings the server to the client's view of that name (`plan`):
- the client has it, the server has the same definition: nothing to do (clients that prepare the
  same text under the same name share it, as with protocol-level statements);
- the client has it, the server lacks it or holds another client's different statement under that
  name: DEALLOCATE that one, then PREPARE the client's, both with their replies swallowed;
- the client does not have it but the server holds someone else's: DEALLOCATE it, so that the
  client's EXECUTE fails as PostgreSQL would make it fail and its PREPARE does not collide.
Another client's statement left on a server is therefore harmless: nobody can run it by accident.

A client that never prepared one holds no dict for them (`client.sql` is None, issue 11: most clients
never do): the functions below take None for "none", and `record` returns the client's dict as it is
now, None once empty.

PREPARE and DEALLOCATE are not transactional in PostgreSQL (a PREPARE in a transaction that rolls back
stays), so they are recorded as soon as the server confirms them with their CommandComplete, whatever
happens to the transaction; a PREPARE that fails, or that a failure earlier in its query string
skipped, is never recorded.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgmux.session.statements import Deallocate, Effect, Execute, Prepare, quote_ident

HELPER = "pgmux_sql"  # the statement and portal name pgmux runs its own PREPARE/DEALLOCATE through
DEFAULT_CAP = 200  # other clients' statements a server keeps, when max_prepared_statements is 0


def definition(p: Prepare) -> str:
    """The PREPARE statement that recreates `p` under the client's name."""
    types = f" ({', '.join(p.param_types)})" if p.param_types else ""
    return f"PREPARE {quote_ident(p.name)}{types} AS {p.query_text}"


def names(effects: Iterable[Effect]) -> list[str]:
    """The statement names these effects use, in order, once each."""
    out: list[str] = []
    for e in effects:
        if isinstance(e, (Prepare, Execute)) or (isinstance(e, Deallocate) and e.name is not None):
            name = e.name
            assert name is not None
            if name not in out:
                out.append(name)
    return out


Step = tuple[str, str, str | None]  # (sql to run, the name, what the server held under it before)


def plan(client: dict[str, str] | None, server: dict[str, str], wanted: Iterable[str]) -> list[Step]:
    """The statements that bring `server` to the client's view of the `wanted` names, with `server`
    updated as if they succeed (undo a failed step with `undo`)."""
    steps: list[Step] = []
    for name in wanted:
        want, have = client.get(name) if client else None, server.get(name)
        if want == have:
            continue
        if have is not None:
            steps.append((f"DEALLOCATE {quote_ident(name)}", name, have))
            del server[name]
        if want is not None:
            steps.append((want, name, None))
            server[name] = want
    return steps


def evict(client: dict[str, str] | None, server: dict[str, str], cap: int) -> list[Step]:
    """DEALLOCATE other clients' statements left on this server, oldest first, while it holds more than
    `cap`: they stay until a client of the same name needs the server, so without a cap a server could
    gather every name any client ever prepared."""
    steps: list[Step] = []
    extra = len(server) - cap
    if extra <= 0:
        return steps
    for name in [n for n in server if not client or n not in client][:extra]:
        steps.append((f"DEALLOCATE {quote_ident(name)}", name, server.pop(name)))
    return steps


def undo(server: dict[str, str], step: Step) -> None:
    """A step the server skipped or refused: a DEALLOCATE leaves what was there, a PREPARE nothing."""
    sql, name, had = step
    if had is not None:
        server[name] = had
    elif server.get(name) == sql:
        del server[name]


def record(client: dict[str, str] | None, server: dict[str, str], e: Effect) -> dict[str, str] | None:
    """A PREPARE or DEALLOCATE the server confirmed (its CommandComplete): the client's statements
    after it (the same dict, made on the first PREPARE; None once none is left)."""
    if isinstance(e, Prepare):
        if client is None:
            client = {}
        client[e.name] = server[e.name] = definition(e)
    elif isinstance(e, Deallocate):
        if e.name is None:
            client = None
            server.clear()
        else:
            if client is not None:
                client.pop(e.name, None)
            server.pop(e.name, None)
    return client or None
