"""Command line, PgBouncer's flags: pgmux [-d] [-R] [-q] [-v] [-u USER] [-V] [-h] CONFIG, plus `pgmux demo`."""

from __future__ import annotations

import argparse
import os
import sys

from pgmux import VERSION_STRING


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgmux", description="PostgreSQL connection pooler and load balancer "
                                "(runs from a pgbouncer.ini or a pgmux.toml). `pgmux demo` starts a throwaway "
                                "primary and replica with pgmux in front.")
    p.add_argument("-d", "--daemon", action="store_true", help="run in the background (needs logfile)")
    p.add_argument("-R", "--reboot", action="store_true", help="online restart: take the listening sockets and "
                   "the clients over from the pgmux running with this configuration (found by its Unix socket), "
                   "which exits when its clients have moved; without one, start normally")
    p.add_argument("-q", "--quiet", action="store_true", help="do not log to stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.add_argument("-u", "--user", help="switch to this OS user at start-up (needed when started as root: "
                   "pgmux refuses to run as root)")
    p.add_argument("-V", "--version", action="version", version=VERSION_STRING)
    p.add_argument("config", help="pgbouncer.ini or pgmux.toml")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "demo":
        from pgmux.demo import run_demo

        return run_demo(argv[1:])
    args = _parser().parse_args(argv)
    from pgmux.config import load_config
    from pgmux.errors import ConfigError

    config_path = os.path.abspath(args.config)  # reloads read it again, whatever the current directory then
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"pgmux: configuration error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"pgmux: cannot read configuration: {e}", file=sys.stderr)
        return 1
    from pgmux.runtime.osuser import SwitchUserError, refuse_root, switch_user

    user = args.user or config.settings.user  # -u wins over `user =`, as in PgBouncer
    if user:
        try:
            switch_user(user)
        except SwitchUserError as e:
            print(f"pgmux: {e}", file=sys.stderr)
            return 1
    refusal = refuse_root()
    if refusal is not None:
        print(f"pgmux: {refusal}", file=sys.stderr)
        return 1
    if args.reboot:  # PgBouncer's online restart: take over from the running pgmux (runtime/reboot.py)
        from pgmux.runtime.reboot import refusal as reboot_refusal

        why = reboot_refusal(config.settings)
        if why:
            print(f"pgmux: {why}", file=sys.stderr)
            return 1
    from pgmux.runtime.main import run

    return run(config, config_path, daemon=args.daemon, quiet=args.quiet, verbose=args.verbose, reboot=args.reboot)
