"""Training metrics: one row per (job_id, step), written by the worker as each step ends
and read by the API while the job trains.

Reads are the hot path (dashboards poll them), so `points_json` has the database build
the response's points array; Python only wraps it. Points are JSONB on PostgreSQL (cheap
to pick names from) and JSON text on SQLite. The (job_id, step) primary key is the index
every read walks.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from numbers import Real

from sqlalchemy import BigInteger, Integer, Text, bindparam, cast, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import aggregate_order_by

from service.auth import active_key_tenant, authenticate, hash_key
from service.db import Database
from service.errors import InvalidInput, NotFound
from service.lifecycle import Claim, fence
from service.models import Job, MetricPoint, utcnow

MAX_LIMIT = 10_000
NAME_LIMIT = 64


def record_step(db: Database, held: Claim, point: dict) -> bool:
    """Upsert one step's metrics and the job's progress summary, fenced by the attempt.

    Returns the job's cancel flag (so the loop learns of a cancel at no extra cost);
    raises Fenced if this attempt no longer owns the job.
    """
    values = {name: _json_safe(value) for name, value in point.items()}
    step = int(values["step"])
    progress: dict = {
        "current_step": step,
        # The ETA's rate is measured from this attempt's first step (model loading excluded).
        "rate_since": func.coalesce(Job.rate_since, utcnow()),
        "rate_since_step": func.coalesce(Job.rate_since_step, step),
    }
    for name in ("mu", "reward_mean"):
        if isinstance(values.get(name), Real):
            progress[name] = float(values[name])
    insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
    statement = insert(MetricPoint).values(job_id=held.job_id, step=step, values=values)
    statement = statement.on_conflict_do_update(
        index_elements=[MetricPoint.job_id, MetricPoint.step], set_={"values": statement.excluded["values"]}
    )
    with db.transaction() as session:
        cancel = fence(session, held, **progress)
        session.execute(statement)
    return cancel


def points_json(
    db: Database, api_key: str, job_id: str, names: list[str] | None = None, after_step: int = 0, limit: int = 1000
) -> str:
    """The JSON document of GET /jobs/{id}/metrics for the caller holding `api_key`:

        {"job_id": ..., "points": [{"step": 1, "mu": 0.8, ...}, ...],
         "next_after_step": <last step returned>, "has_more": <another page exists>}

    Points are in step order; `names` keeps only those metrics (step always included).
    One statement, so a dashboard's poll is one round trip: the database checks the key
    (exactly, not from a cache: a revoked key fails on its next poll) and the owner, builds
    the points array and counts what follows, so no row becomes a Python object. Raises
    Unauthorized for an unknown or revoked key, NotFound for another tenant's job.
    """
    names = _check_query(names, after_step, limit)
    params = {"key_hash": hash_key(api_key), "job_id": job_id, "after_step": after_step, "limit": limit}
    with db.read() as session:
        caller, owner, points, last, available = session.execute(_page_statement(db.dialect, tuple(names)), params).one()
    if caller is None:
        authenticate(db, api_key)  # raises, saying whether the key is unknown or revoked
    if owner != caller:
        raise NotFound(f"no job {job_id}")
    return '{"job_id":"%s","points":%s,"next_after_step":%d,"has_more":%s}' % (
        job_id, points or "[]", after_step if last is None else last, "true" if available > limit else "false"
    )


def trained_tokens(db: Database, job_ids: list[str]) -> dict[str, int]:
    """Tokens trained on (the `train_tokens` step metric, summed over steps) per job, in one
    grouped query; jobs without that metric are absent."""
    if not job_ids:
        return {}
    per_step = cast(MetricPoint.values["train_tokens"].as_integer(), BigInteger)  # ->> on PostgreSQL, json_extract on SQLite
    query = (select(MetricPoint.job_id, func.sum(per_step)).where(MetricPoint.job_id.in_(job_ids))
             .group_by(MetricPoint.job_id))
    with db.read() as session:
        return {job_id: int(total) for job_id, total in session.execute(query) if total is not None}


@lru_cache(maxsize=256)
def _page_statement(dialect: str, names: tuple[str, ...]):
    """The page query with bind parameters, built once per (dialect, names): building a
    statement costs more than running this one."""
    limit = bindparam("limit", type_=Integer)
    after = (MetricPoint.job_id == bindparam("job_id"), MetricPoint.step > bindparam("after_step", type_=Integer))
    page = select(MetricPoint.step, MetricPoint.values).where(*after).order_by(MetricPoint.step).limit(limit).subquery()
    caller = active_key_tenant(bindparam("key_hash"))
    owner = select(Job.tenant_id).where(Job.id == bindparam("job_id")).scalar_subquery()
    following = select(MetricPoint.step).where(*after).order_by(MetricPoint.step).limit(limit + 1)  # index-only
    ahead = select(func.count()).select_from(following.subquery()).scalar_subquery()
    points = cast(_points_array(dialect, page, list(names)), Text)
    return select(caller, owner, points, func.max(page.c.step), ahead).select_from(page)


def _points_array(dialect: str, page, names: list[str]):
    """SQL for the JSON array of the page's points (all metrics, or step + `names`)."""
    if dialect == "postgresql":
        point = _named_point_pg(page, names) if names else page.c["values"]
        return func.json_agg(aggregate_order_by(point, page.c.step))
    # SQLite aggregates in the subquery's (step) order; json() keeps a stored point an object.
    point = _named_point_sqlite(page, names) if names else func.json(page.c["values"])
    return func.json_group_array(point)


# Issue 13, item 10: a function call takes at most 100 arguments on PostgreSQL and 127 on
# SQLite, so a point of many names is built from calls of at most this many names each
# (63 names were a 503 on SQLite, 50 on PostgreSQL).
NAMES_PER_CALL = 40


def _named_point_pg(page, names: list[str]):
    point = func.jsonb_build_object("step", page.c.step)
    for chunk in _chunks(names):
        point = point.op("||")(func.jsonb_build_object(*_pairs(page, chunk)))
    return point


def _named_point_sqlite(page, names: list[str]):
    point = func.json_object("step", page.c.step)
    for chunk in _chunks(names):  # json_insert keeps a missing metric as null (json_patch would drop it)
        point = func.json_insert(point, *[part for name in chunk for part in (f'$."{name}"', page.c["values"][name])])
    return point


def _chunks(names: list[str]) -> list[list[str]]:
    return [names[i:i + NAMES_PER_CALL] for i in range(0, len(names), NAMES_PER_CALL)]


def _pairs(page, names: list[str]) -> list:
    return [part for name in names for part in (literal(name), page.c["values"][name])]


def _check_query(names: list[str] | None, after_step: int, limit: int) -> list[str]:
    problems = []
    names = [name for name in (names or []) if name and name != "step"]
    bad = [name for name in names if not name.replace("_", "").isalnum() or not name.isascii() or len(name) > NAME_LIMIT]
    if bad:
        problems.append(f"names: {bad[0]!r} is not a metric name (letters, digits and _ only, e.g. names=mu,reward_mean)")
    if len(names) > NAME_LIMIT:
        problems.append(f"names: at most {NAME_LIMIT} names per request")
    if after_step < -1:  # -1 also returns a continued job's step-0 evaluation (issue 17)
        problems.append("after_step: must be >= -1 (the last step you already have; -1 includes step 0)")
    if not 1 <= limit <= MAX_LIMIT:
        problems.append(f"limit: must be between 1 and {MAX_LIMIT}")
    if problems:
        raise InvalidInput("; ".join(problems), problems)
    return list(dict.fromkeys(names))


def _json_safe(value: object) -> object:
    # NaN and inf are not JSON (PostgreSQL rejects them); store them as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Real):  # numpy / torch scalars
        return _json_safe(float(value))
    return json.loads(json.dumps(value, default=str))
