"""Issue 13, item 10: GET /jobs/{id}/metrics serves every allowed number of names (up to
64, of up to 64 characters) on SQLite and PostgreSQL, refuses more with a 422, and no
request that cannot succeed is answered 503 (which tells clients to retry forever)."""

from __future__ import annotations

import socket
import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from api.errors import is_transient
from service import lifecycle, metrics
from service.db import get_database
from service.specs import JobSpec
from tests.conftest import PG_ADMIN_URL, TINY_SPEC

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["postgresql", "sqlite"])
def api(request):
    return request.getfixturevalue("pg_api" if request.param == "postgresql" else "embedded_api")


def test_13_10_any_allowed_number_of_metric_names(api, record):
    db = get_database(api.settings.resolved_database_url)
    key = api.key("alice")
    with api.client(key) as client:
        job_id = client.post("/jobs", json=TINY_SPEC).json()["id"]
    held = lifecycle.claim(db, job_id, "w", 30)
    stored = [f"m{i:02d}" for i in range(60)] + ["x" * 64]
    for step in (1, 2, 3):
        metrics.record_step(db, held, {"step": step, **{name: step + i / 100 for i, name in enumerate(stored)}})
    answers = {}
    with api.client(key) as client:
        for count in (1, 49, 50, 62, 63, 64):
            names = stored[-count:] if count < 64 else stored[-61:] + ["absent_a", "absent_b", "absent_c"]
            response = client.get(f"/jobs/{job_id}/metrics", params={"names": ",".join(names)})
            answers[count] = response.status_code
            assert response.status_code == 200, (count, response.text)
            points = response.json()["points"]
            assert [p["step"] for p in points] == [1, 2, 3]
            assert all(set(p) == {"step", *names} for p in points), count
            assert points[1][names[0]] == pytest.approx(2 + stored.index(names[0]) / 100)
            assert all(points[0][name] is None for name in names if name.startswith("absent"))
        over = client.get(f"/jobs/{job_id}/metrics", params={"names": ",".join(f"n{i}" for i in range(65))})
        assert over.status_code == 422 and "at most 64 names" in over.json()["detail"], over.text
    record(f"13.10 ({db.dialect})", "GET /jobs/{id}/metrics with 1, 49, 50, 62, 63 and 64 names (one of 64 "
           "characters, 3 never recorded), then 65", "200 with every name for each (missing ones null); 65: 422 "
           "naming the cap; never 503", f"{answers}; 65 names: {over.status_code} '{over.json()['detail']}'")


def test_13_10_only_outages_are_503(pg_url, tmp_path, record):
    """The 503 handler's classification, fed real errors of both databases."""
    errors = {}
    sqlite_engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}", connect_args={"timeout": 0})
    args = ", ".join(f"'k{i}', {i}" for i in range(100))
    with sqlite_engine.connect() as conn, pytest.raises(OperationalError) as too_many:
        conn.execute(text(f"SELECT json_object({args})"))
    errors["sqlite: too many function arguments"] = too_many.value
    with sqlite_engine.connect() as conn, pytest.raises(OperationalError) as no_table:
        conn.execute(text("SELECT * FROM no_such_table"))
    errors["sqlite: no such table"] = no_table.value
    holder = sqlite3.connect(tmp_path / "x.db", timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with sqlite_engine.connect() as conn, pytest.raises(OperationalError) as locked:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder.execute("ROLLBACK")
    errors["sqlite: database is locked"] = locked.value
    pg_engine = create_engine(pg_url)
    with pg_engine.connect() as conn, pytest.raises(OperationalError) as pg_too_many:
        conn.execute(text(f"SELECT jsonb_build_object({args})"))
    errors["postgresql: too many function arguments"] = pg_too_many.value
    pg_engine.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    down = create_engine(PG_ADMIN_URL.replace("127.0.0.1:5432", f"127.0.0.1:{closed_port}"))
    with pytest.raises(OperationalError) as refused:
        down.connect()
    errors["postgresql: connection refused"] = refused.value
    verdicts = {what: is_transient(error) for what, error in errors.items()}
    assert verdicts == {
        "sqlite: too many function arguments": False, "sqlite: no such table": False,
        "sqlite: database is locked": True, "postgresql: too many function arguments": False,
        "postgresql: connection refused": True,
    }
    record("13.10b", "real database errors: too many function arguments (SQLite, PostgreSQL), a missing table, a "
           "locked SQLite file, a refused PostgreSQL connection", "503 + Retry-After only for the outages",
           "; ".join(f"{what}: {'503' if ok else '500, no Retry-After'}" for what, ok in verdicts.items()))
