"""runtime/pool_watch.py over fake connections (tests/unit/fakes.py): auto pools get a controller and
fixed ones do not, the size chosen is applied and survives a reload, SHOW ADVICE has a row per pool."""

from __future__ import annotations

from pathlib import Path

from fakes import Rig

from pgmux.pooling.autosize import START
from pgmux.runtime.pool_watch import PoolWatch


def test_auto_pools_get_a_controller_and_keep_its_size_across_a_reload(tmp_path: Path) -> None:
    rig = Rig(tmp_path, databases="auto = host=127.0.0.1 port=5432 dbname=appdb pool_size=auto "
                                  "max_db_connections=50")
    watch = PoolWatch(rig.app)
    rig.login(database="auto")
    rig.login(database="app")
    watch()
    pools = {p.database: p for p in rig.app.registry}
    assert pools["auto"].limits.pool_size == START and pools["app"].limits.pool_size == 2
    sizers = {p.database: sizer for p, _, sizer in watch.watched.values()}
    assert sizers["app"] is None
    auto = sizers["auto"]
    assert auto is not None and (auto.lo, auto.hi) == (1, 50)  # max_db_connections bounds it
    auto.size = auto.home = 20
    watch._apply(pools["auto"], 20)
    assert pools["auto"].limits.pool_size == 20
    rig.app.reload()  # _apply_limits starts auto pools at START; the reload hook puts the choice back
    assert pools["auto"].limits.pool_size == 20 and pools["app"].limits.pool_size == 2
    rig.clock.advance(0.2)
    watch()
    rows = {r.database: r for r in watch.rows()}
    assert rows["auto"].auto == "yes" and rows["auto"].pool_size == 20
    assert rows["app"].auto == "no" and rows["app"].verdict == "idle"


def test_a_pool_that_stops_being_auto_drops_its_controller(tmp_path: Path) -> None:
    rig = Rig(tmp_path, settings="default_pool_size = auto")
    watch = PoolWatch(rig.app)
    rig.login(database="app")
    watch()
    pool = next(iter(rig.app.registry))
    assert next(iter(watch.watched.values()))[2] is not None
    assert pool.limits.pool_size == START
    ini = Path(rig.app.config_path)
    ini.write_text(ini.read_text().replace("default_pool_size = auto", "default_pool_size = 3"))
    rig.app.reload()
    assert next(iter(watch.watched.values()))[2] is None and pool.limits.pool_size == 3


def test_max_connections_answers_are_kept_in_place() -> None:
    """issue 11: once a minute, the same object overwritten, not a new tuple of new numbers."""
    from pgmux.runtime.pool_watch import Asked

    a = Asked()
    assert a.get() == (None, 0, 0.0, "not asked yet")
    nums = a.nums
    a.set(97, 12, 1234.5, "asked")
    assert a.get() == (97, 12, 1234.5, "asked") and a.nums is nums
    a.set(None, 0, 1300.0, "could not ask: refused")
    assert a.get() == (None, 0, 1300.0, "could not ask: refused")
