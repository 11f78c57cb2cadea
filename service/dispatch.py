"""Fair dispatch between tenants and per-tenant job quotas (issue 13, item 8).

The broker message only wakes a worker; which job it runs is chosen here from the rows:
the oldest queued job of the tenant with the fewest running jobs, ties going to the tenant
served least recently (then to the oldest waiting job). `lifecycle` claims the chosen job
and calls the quota checks inside its own transactions.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db import Database
from service.errors import TooManyRequests
from service.models import Job, Tenant


def next_job_id(db: Database, max_running: int) -> str | None:
    """The id of the job to claim next (see `lifecycle.claim_next`), or None."""
    waiting = Job.status == "queued", Job.cancel_requested.is_(False)
    tenants = (
        select(Job.tenant_id, func.min(Job.created_at).label("oldest")).where(*waiting).group_by(Job.tenant_id).subquery()
    )
    running = (
        select(Job.tenant_id, func.count().label("n")).where(Job.status == "running").group_by(Job.tenant_id).subquery()
    )
    served = (
        select(Job.tenant_id, func.max(Job.started_at).label("last"))
        .where(Job.tenant_id.in_(select(tenants.c.tenant_id)), Job.started_at.is_not(None))
        .group_by(Job.tenant_id)
        .subquery()
    )
    busy = func.coalesce(running.c.n, 0)
    choose = (
        select(tenants.c.tenant_id)
        .outerjoin(running, running.c.tenant_id == tenants.c.tenant_id)
        .outerjoin(served, served.c.tenant_id == tenants.c.tenant_id)
        .order_by(busy, served.c.last.is_not(None), served.c.last, tenants.c.oldest, tenants.c.tenant_id)
        .limit(1)
    )
    if max_running:
        choose = choose.where(busy < max_running)
    with db.read() as session:
        tenant_id = session.scalar(choose)
        if tenant_id is None:
            return None
        return session.scalar(
            select(Job.id).where(*waiting, Job.tenant_id == tenant_id).order_by(Job.created_at, Job.id).limit(1)
        )


def check_queued_quota(session: Session, tenant_id: str, max_queued: int) -> None:
    """Inside the create transaction: raise TooManyRequests if the tenant already has
    `max_queued` queued jobs (0: no limit)."""
    if not max_queued:
        return
    # Creates of one tenant queue up on its row (PostgreSQL), so concurrent POSTs cannot overshoot.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    queued = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status == "queued"))
    if queued >= max_queued:
        raise TooManyRequests(
            f"you have {queued} queued jobs, the per-tenant limit of queued jobs (AMFT_MAX_QUEUED_JOBS_PER_TENANT="
            f"{max_queued}); wait for some to start or cancel some (POST /jobs/{{id}}/cancel), then retry"
        )


def wake_tenant_queue(session: Session, job_id: str) -> None:
    """A job ended: its tenant may have a job held back by the running limit, whose message
    was spent while it could not run. Have the next reaper pass publish its oldest one."""
    tenant_id = select(Job.tenant_id).where(Job.id == job_id).scalar_subquery()
    oldest = (
        select(Job.id).where(Job.tenant_id == tenant_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .order_by(Job.created_at, Job.id).limit(1).scalar_subquery()
    )
    session.execute(update(Job).where(Job.id == oldest).values(queued_at=None))
