"""Publishing a train task on the embedded default's broker (kombu's SQLAlchemy transport on SQLite)."""

from __future__ import annotations

import base64
import json
import sqlite3

from kombu.transport import sqlalchemy as sqlalchemy_transport
from sqlalchemy.exc import OperationalError

from service.settings import Settings
from workers.celery_app import TRAIN_TASK, Broker


def _published(broker_db) -> list[tuple[str, list]]:
    """(task name, args) of every message in the broker's SQLite file."""
    with sqlite3.connect(broker_db) as db:
        payloads = [json.loads(row[0]) for row in db.execute("select payload from kombu_message")]
    return [(p["headers"]["task"], json.loads(base64.b64decode(p["body"]))[0]) for p in payloads]


def test_publish_survives_a_transient_broker_database_error(tmp_path, monkeypatch):
    broker = Broker(Settings(home=tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"))
    original = sqlalchemy_transport.Channel._get_or_create
    calls = []

    def locked_once(channel, queue):
        calls.append(queue)
        if len(calls) == 1:  # what SQLite says while another process holds the file
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return original(channel, queue)

    monkeypatch.setattr(sqlalchemy_transport.Channel, "_get_or_create", locked_once)
    broker.publish_train("job-1")
    broker.publish_train("job-2")  # the pooled connection is usable again afterwards
    assert _published(tmp_path / "broker.db") == [(TRAIN_TASK, ["job-1"]), (TRAIN_TASK, ["job-2"])]
