"""Fixtures of the fault suite: a private PostgreSQL cluster (one per session, a fresh
database per test), a private Redis per test, the API on a loopback port, and real Celery
worker subprocesses running the production app with fault injection (tests.faults.inject).

Reuses tests/conftest.py: `ApiServer`, `Workers`, `settings_env`, `wait_for`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from service.db import get_database, migrate
from service.settings import Settings
from tests.conftest import ApiServer, Workers, wait_for
from tests.faults.checker import Outcome, check_job
from tests.faults.servers import OwnPostgres, OwnRedis, temp_root

# 20 steps of builtin:tiny, a checkpoint every 5; warm-up 2, then the controller with a
# meta step every 3 steps and a visible entropy term, so a resume that lost controller
# state (mu, H*, meta cursor) would change the curve.
SPEC20 = {
    "method": "amft",
    "model": "builtin:tiny",
    "training": {"total_steps": 20, "warmup_steps": 2, "learning_rate": 1e-3, "save_every": 5,
                 "sft_batch_size": 2, "rl_prompts_per_step": 2, "num_generations": 2,
                 "max_completion_tokens": 8, "seed": 7},
    "controller": {"meta_interval": 3, "eta_H": 0.004, "meta_utility": "nll"},
}
# One torch thread per process: the machine has 2 cores shared by several engineers, and
# oversubscribed torch threads make a 0.3 s step take 10-30 s. The reference run uses the same.
TORCH_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Short lease, heartbeat and reaper so that lost workers are noticed in seconds. The lease
# keeps slack over the heartbeat: the machine is shared and a loaded step can be slow.
# A worker SIGSTOPped inside a transaction holds the job's row lock: PostgreSQL ends that
# session after 5 s so the reaper and the next worker are not blocked (test 4).
FAULT_SETTINGS = {"lease_seconds": 6.0, "heartbeat_seconds": 0.5, "reaper_seconds": 0.5,
                  "requeue_unclaimed_seconds": 30.0, "max_attempts": 3, "db_idle_in_transaction_seconds": 5.0}


@pytest.fixture(scope="session")
def own_pg():
    """A private PostgreSQL cluster with a migrated template database."""
    pg = OwnPostgres(temp_root("amft-pg-") / "cluster").init()
    pg.start()
    pg.sql("CREATE DATABASE amft_template")
    migrate(pg.url("amft_template"))
    get_database(pg.url("amft_template")).engine.dispose()
    yield pg
    pg.destroy()


@pytest.fixture
def own_redis(tmp_path: Path):
    redis = OwnRedis(tmp_path).start()
    yield redis
    if redis.proc and redis.proc.poll() is None:
        redis.proc.kill()
        redis.proc.wait(timeout=10)


class FaultWorkers(Workers):
    """`celery -A tests.faults.inject worker -Q train -c 1` subprocesses; `fault` is
    AMFT_TEST_FAULT (see tests.faults.inject)."""

    def __init__(self, settings: Settings, log_dir: Path, fault_dir: Path):
        super().__init__(settings, log_dir)
        self.fault_dir = fault_dir

    def start(self, fault: str = "", settings: Settings | None = None) -> subprocess.Popen:
        """A worker of the fault-injecting app (tests/faults/inject.py), one torch thread."""
        fault_env = {**TORCH_ENV, "AMFT_TEST_FAULT": fault, "AMFT_TEST_FAULT_DIR": str(self.fault_dir)}
        return super().start(settings, app="tests.faults.inject", extra_env=fault_env)

    def signal_group(self, proc: subprocess.Popen, sig: int) -> None:
        os.killpg(proc.pid, sig)

    def stop_all(self) -> None:
        for proc in self.procs:  # a SIGSTOPped worker would ignore SIGTERM until continued
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        super().stop_all()


class FaultEnv:
    """One test's world: settings, API, workers, fault folder, and helpers."""

    def __init__(self, settings: Settings, tmp_path: Path):
        self.settings = settings
        self.db_url = settings.resolved_database_url
        self.fault_dir = tmp_path / "faults"
        self.fault_dir.mkdir(exist_ok=True)
        self.workers = FaultWorkers(settings, tmp_path, self.fault_dir)
        self.api: ApiServer | None = None
        self.key: str | None = None

    def start_api(self) -> ApiServer:
        self.api = ApiServer(self.settings).__enter__()
        self.key = self.api.key("alice")
        return self.api

    def client(self):
        return self.api.client(self.key)

    def submit(self, spec: dict = SPEC20, **kwargs) -> str:
        with self.client() as client:
            response = client.post("/jobs", json=spec, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        with self.client() as client:
            return client.get(f"/jobs/{job_id}").json()

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float = 240) -> dict:
        def done():
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_for(done, timeout, interval=0.25, what=f"job {job_id} to reach {statuses}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.workers.logs()}") from None

    def wait_paused(self, job_id: str, attempt: int, step: int, timeout: float = 240) -> None:
        marker = self.fault_dir / f"paused-{job_id}-{attempt}-{step}"
        try:
            wait_for(marker.exists, timeout, interval=0.05, what=f"attempt {attempt} to pause at step {step}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.workers.logs()}") from None

    def go(self) -> None:
        (self.fault_dir / "go").touch()

    def check(self, job_id: str, status: str, spec: dict = SPEC20, **kwargs) -> Outcome:
        try:
            return check_job(self.db_url, job_id, status=status, spec=spec, fault_dir=self.fault_dir, **kwargs)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- worker logs ---\n{self.workers.logs()}") from None

    def close(self) -> None:
        self.go()  # release any paused worker so it can shut down
        self.workers.stop_all()
        if self.api is not None:
            self.api.__exit__(None, None, None)
        get_database(self.db_url).engine.dispose()


@pytest.fixture
def fault_db_url(own_pg: OwnPostgres) -> str:
    name = f"amft_f_{uuid.uuid4().hex[:10]}"
    own_pg.sql(f"CREATE DATABASE {name} TEMPLATE amft_template")
    yield own_pg.url(name)
    get_database(own_pg.url(name)).engine.dispose()
    try:
        own_pg.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except Exception:  # noqa: BLE001 - the cluster may be down after a failed restart test
        pass


def make_settings(db_url: str, redis: OwnRedis, tmp_path: Path, **overrides) -> Settings:
    values = {**FAULT_SETTINGS, **overrides}
    return Settings(home=tmp_path / "home", database_url=db_url, broker_url=redis.url, **values)


@pytest.fixture
def env_factory(fault_db_url: str, own_redis: OwnRedis, tmp_path: Path):
    """`env_factory(**settings overrides)` -> a FaultEnv (closed at teardown)."""
    made: list[FaultEnv] = []

    def make(**overrides) -> FaultEnv:
        env = FaultEnv(make_settings(fault_db_url, own_redis, tmp_path, **overrides), tmp_path)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


@pytest.fixture
def fenv(env_factory) -> FaultEnv:
    """The default world, with the API started."""
    env = env_factory()
    env.start_api()
    return env


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "process did not exit"
        time.sleep(0.1)
    return proc.returncode
