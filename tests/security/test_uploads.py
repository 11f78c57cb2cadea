"""Issue 13, item 9: uploads. Every failure path leaves nothing on disk, leftovers of a
crashed process are swept at start, validation holds one line at a time, files can be
deleted, and stored bytes count against the tenant's quota."""

from __future__ import annotations

import fcntl
import io
import socket
import tracemalloc
from urllib.parse import urlsplit

import pytest

from service.files import Upload, _bounded_lines
from service.records import validate_jsonl
from tests.conftest import TINY_SPEC, ApiServer, wait_for
from tests.security.conftest import RECORD

pytestmark = pytest.mark.timeout(180)
CAP = 256 * 1024
QUOTA = 300 * 1024  # above CAP, so that each limit can be hit on its own


@pytest.fixture
def api(pg_settings):
    with ApiServer(pg_settings.model_copy(update={"max_upload_bytes": CAP, "max_upload_bytes_per_tenant": QUOTA})) as s:
        yield s


def on_disk(server) -> list[str]:
    folder = server.settings.resolved_artifacts_dir / "files"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def chunks(body: bytes, size: int = 8192):
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_13_9_every_failed_upload_leaves_nothing(api, record):
    bodies = {
        "deep nesting": b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b', "answer": "1"}\n',
        "a 5000-digit integer": b'{"prompt": "x", "answer": ' + b"7" * 5000 + b"}\n",
        "bad UTF-8": RECORD + b'{"prompt": "\xff\xfe", "answer": "1"}\n',
        "over the upload cap (declared)": RECORD * (CAP // len(RECORD) + 1),
        "over the upload cap (chunked)": chunks(RECORD * (CAP // len(RECORD) + 1)),
        "over the tenant quota (chunked)": chunks(RECORD * (200_000 // len(RECORD))),  # 150 KB stored already
    }
    expected = {"deep nesting": 422, "a 5000-digit integer": 422, "bad UTF-8": 422,
                "over the upload cap (declared)": 413, "over the upload cap (chunked)": 413,
                "over the tenant quota (chunked)": 429}
    answers = {}
    with api.client(api.key("alice")) as alice:
        baseline = []
        for what, body in bodies.items():
            if what == "over the tenant quota (chunked)":  # a file the quota counts first
                kept = alice.post("/files", content=RECORD * (150_000 // len(RECORD)))
                assert kept.status_code == 201, kept.text
                baseline = on_disk(api)
                assert baseline == [f"{kept.json()['id']}.jsonl"]
            response = alice.post("/files", content=body)
            answers[what] = response.status_code
            assert response.status_code == expected[what], (what, response.text)
            assert response.json()["detail"], what
            assert on_disk(api) == baseline, what
        # A client that goes away mid-body.
        host, port = urlsplit(api.url).hostname, urlsplit(api.url).port
        with socket.create_connection((host, port)) as raw:
            raw.sendall(f"POST /files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.headers['Authorization'][7:]}"
                        f"\r\nContent-Length: 3000\r\n\r\n".encode() + RECORD * 4)
            wait_for(lambda: on_disk(api) != baseline, 10, 0.05, "the partial upload to appear")
        wait_for(lambda: on_disk(api) == baseline, 10, 0.05, "the disconnected upload's partial file to go")
        answers["client disconnect"] = "closed"
        assert [f["id"] for f in alice.get("/files").json()["files"]] == [kept.json()["id"]]
    record("13.9a", "uploads with deep nesting, a 5000-digit integer, bad UTF-8, over the cap (declared and "
           "chunked), over the tenant quota, and a client that disconnects mid-body",
           "a 4xx naming the problem for each; no partial file, no file, no row left",
           "; ".join(f"{what}: {code}" for what, code in answers.items()) + "; nothing new on disk after each")


def test_13_9_leftovers_are_swept_at_start_but_live_uploads_kept(pg_settings, record):
    incoming = pg_settings.resolved_artifacts_dir / "files" / ".incoming"
    incoming.mkdir(parents=True)
    for n in range(3):
        (incoming / f"dead{n}.part").write_bytes(b"x" * 1000)  # what a crashed API process leaves
    live = Upload(pg_settings.resolved_artifacts_dir, CAP)  # another process's upload in progress
    live.write(RECORD)
    try:
        with ApiServer(pg_settings):
            left = sorted(p.name for p in incoming.iterdir())
        assert left == [live._part.name]
    finally:
        live.discard()
    assert list(incoming.iterdir()) == []
    record("13.9b", "3 partial uploads left by a crashed process, and one upload in progress (flock held), then "
           "the API starts", "the leftovers are removed, the live upload is kept",
           f"after start: {left} (the live one only)")


def test_13_9_validation_holds_one_line_at_a_time(record):
    line = b'{"prompt": "p", "answer": 1}\n'
    body = line * 30_000  # 0.9 MB of tiny records (about 15 MB as parsed dicts)
    tracemalloc.start()
    count = validate_jsonl(_bounded_lines(io.BytesIO(body), 1024))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 30_000
    assert peak < 1024 * 1024, f"validation peaked at {peak} bytes of Python objects"
    # A line longer than the per-record bound is reported, not read whole.
    huge = line + b'{"prompt": "' + b"x" * 5000 + b'", "answer": 1}\n' + line
    with pytest.raises(ValueError, match="line 2: longer than"):
        validate_jsonl(_bounded_lines(io.BytesIO(huge), 1024))
    record("13.9c", "validate 30,000 tiny records (0.9 MB) under tracemalloc; a line over the per-record bound",
           "memory independent of the number of records; the long line reported by number",
           f"peak {peak / 1024:.0f} KiB of Python objects for {count} records; 'line 2: longer than ...'")


def test_13_9_delete_file_and_upload_quota(api, record):
    small = RECORD * 1400  # about 120 KB; the quota is 300 KiB
    with api.client(api.key("alice")) as alice, api.client(api.key("bob")) as bob:
        first = alice.post("/files", content=small).json()
        second = alice.post("/files", content=small).json()
        third = alice.post("/files", content=small)
        assert third.status_code == 429 and "AMFT_MAX_UPLOAD_BYTES_PER_TENANT" in third.json()["detail"], third.text
        assert bob.post("/files", content=small).status_code == 201  # another tenant's quota is its own
        assert bob.delete(f"/files/{first['id']}").status_code == 404
        spec = {**TINY_SPEC, "datasets": {"sft": {"source": first["source"]}}}
        job = alice.post("/jobs", json=spec).json()
        busy = alice.delete(f"/files/{first['id']}")
        assert busy.status_code == 409 and job["id"] in busy.json()["detail"], busy.text
        assert alice.delete(f"/files/{second['id']}").status_code == 204
        assert alice.post("/files", content=small).status_code == 201  # room again
        assert alice.post(f"/jobs/{job['id']}/cancel").status_code == 200
        assert alice.delete(f"/files/{first['id']}").status_code == 204
        assert alice.delete(f"/files/{first['id']}").status_code == 404
        ids = {f["id"] for f in alice.get("/files").json()["files"]}
    assert first["id"] not in ids and second["id"] not in ids and len(ids) == 1
    assert not any(first["id"] in name or second["id"] in name for name in on_disk(api))
    record("13.9d", "quota 300 KiB: Alice uploads 3 files of 120 KB; Bob deletes Alice's file; Alice deletes a "
           "file a queued job uses, then an unused one, then the first after cancelling the job",
           "429 naming the quota setting; 404 for another tenant; 409 while a queued job uses it; 204 and gone "
           "from disk otherwise; deleting frees quota",
           f"3rd upload 429; Bob 404; in use 409 naming job; deletes 204; re-delete 404; files left {len(ids)}")


def test_13_9_sweep_skips_locked_parts(tmp_path):
    """The lock the sweep relies on is held by an Upload for its whole life."""
    upload = Upload(tmp_path, CAP)
    with upload._part.open("rb") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    upload.discard()
