"""auth_file (userlist.txt): `"user" "secret" ...` per line, as PgBouncer reads it.

Both fields are double-quoted; `""` inside a field stands for one `"`. Anything after the second field is
ignored (PgBouncer's files often carry a third, unused field). Lines starting with `;` are comments and
blank lines are skipped. The secret is a plain password, "md5" + md5(password + user), or a
"SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>" secret; pgmux keeps it as written.
Where PgBouncer logs "broken auth file" and stops reading, pgmux raises ConfigError naming the line, so a
typo cannot silently drop every user after it. A user listed twice keeps the later secret, as in PgBouncer.
"""

from __future__ import annotations

from pgmux.errors import ConfigError


def _field(line: str, start: int) -> tuple[str, int] | None:
    """Read a quoted field whose opening quote is at `start`; return it and the index after its close."""
    out: list[str] = []
    i = start + 1
    while i < len(line):
        ch = line[i]
        if ch == '"':
            if line.startswith('"', i + 1):  # "" is an escaped quote
                out.append('"')
                i += 2
                continue
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    return None  # no closing quote on this line


def parse_userlist(text: str, file: str = "<userlist>") -> dict[str, str]:
    users: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        start = len(line) - len(line.lstrip())
        if line[start] != '"':
            raise ConfigError('expected "user" "secret"', file=file, line=lineno)
        user = _field(line, start)
        if user is None:
            raise ConfigError("user name has no closing quote", file=file, line=lineno)
        name, pos = user
        quote = line.find('"', pos)
        if quote < 0 or line[pos:quote].strip():
            raise ConfigError(f'user {name!r} has no quoted secret', file=file, line=lineno, key=name)
        secret = _field(line, quote)
        if secret is None:
            raise ConfigError(f"secret of user {name!r} has no closing quote",
                              file=file, line=lineno, key=name)
        if not name:
            raise ConfigError("empty user name", file=file, line=lineno)
        users[name] = secret[0]
    return users


def load_userlist(path: str) -> dict[str, str]:
    """Read an auth_file. Used at load and on reload; unreadable or malformed files raise ConfigError."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read auth_file: {exc.strerror or exc}", file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"auth_file is not valid UTF-8: {exc.reason}", file=path) from None
    return parse_userlist(text, path)
