"""`amft jobs ...` and `amft files upload`: drive a running service through the Python client.

Connection: --url / AMFT_URL (default http://127.0.0.1:AMFT_API_PORT) and --key / AMFT_API_KEY.
`watch` (and `submit --watch`) exit with the job's outcome: 0 succeeded, 1 failed, 3 cancelled.
Any command exits 4, with a one-line message, when the service cannot be reached (after --retries).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}
UNREACHABLE = 4


def add_connection(parser) -> None:
    parser.add_argument("--url", default=os.environ.get("AMFT_URL"), help="Service URL (default AMFT_URL).")
    parser.add_argument("--key", default=os.environ.get("AMFT_API_KEY"), help="API key (default AMFT_API_KEY).")
    parser.add_argument("--retries", type=int, default=5,
                        help="Retries, with backoff, of a busy (429/503) or unreachable service (default 5).")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("jobs", help="Submit, list, watch, cancel jobs on a running service.")
    add_connection(parser)
    actions = parser.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="Submit a job spec (YAML or JSON).")
    submit.add_argument("spec", type=Path)
    submit.add_argument("--watch", action="store_true", help="Then watch it; exit with its outcome.")
    listing = actions.add_parser("list", help="Your jobs, newest first.")
    listing.add_argument("--status", help="Only jobs with this status.")
    listing.add_argument("--limit", type=int, default=50)
    for name, text in (("show", "Show one job as JSON."), ("watch", "Live progress; exits 0 only on success."),
                       ("cancel", "Cancel a job."), ("logs", "The job's events."), ("checkpoints", "Its checkpoints.")):
        actions.add_parser(name, help=text).add_argument("job_id")
    metrics = actions.add_parser("metrics", help="Per-step metrics (JSON lines, or CSV).")
    metrics.add_argument("job_id")
    metrics.add_argument("--csv", action="store_true", help="CSV with one column per metric.")
    metrics.add_argument("--names", help="Comma-separated metric names, e.g. mu,reward_mean.")
    generate = actions.add_parser("generate", help="Complete a prompt from JOB[:STEP] (or base:builtin:tiny).")
    generate.add_argument("model", help="<job_id>, <job_id>:<step> or base:builtin:tiny")
    generate.add_argument("prompt")
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0)
    parser.set_defaults(run=run)

    add_files_parser(actions, with_connection=False)  # `amft jobs files upload F`
    add_files_parser(subparsers, with_connection=True)  # and `amft files upload F`


def add_files_parser(subparsers, with_connection: bool) -> None:
    files = subparsers.add_parser("files", help="Upload JSONL datasets to a running service.")
    if with_connection:
        add_connection(files)
    file_actions = files.add_subparsers(dest="file_action", required=True)
    file_actions.add_parser("upload", help="Upload a JSONL file; prints its `file:<id>` source.").add_argument(
        "path", type=Path)
    file_actions.add_parser("list", help="Your uploaded files.")
    files.set_defaults(run=run_files)


def connect(args):
    """The client for --url/--key (or AMFT_URL/AMFT_API_KEY)."""
    from client import Client

    if not args.key:
        sys.exit("amft: no API key: pass --key or set AMFT_API_KEY (create one with `amft keys create`)")
    if not args.url:
        from service.settings import get_settings

        args.url = f"http://127.0.0.1:{get_settings().api_port}"
    return Client(args.url, args.key, retries=max(args.retries, 0))


def unreachable(command: str, error: Exception) -> int:
    """One line, no traceback, for a service that could not be reached (or dropped us)."""
    reason = " ".join(str(error).split()) or type(error).__name__
    print(f"{command}: cannot reach the service: {reason}", file=sys.stderr)
    return UNREACHABLE


def run(args) -> int:
    import httpx

    from client import ApiError

    try:
        with connect(args) as amft:
            return ACTIONS[args.action](amft, args)
    except ApiError as error:
        print(f"amft jobs {args.action}: {error.detail}", file=sys.stderr)
        for problem in error.problems if len(error.problems) > 1 else []:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        return unreachable(f"amft jobs {args.action}", error)


def run_files(args) -> int:
    import httpx

    from client import ApiError

    try:
        with connect(args) as amft:
            if args.file_action == "list":
                for row in amft.files.list():
                    print(json.dumps(row, default=str))
                return 0
            answer = amft.files.upload(args.path)
    except ApiError as error:
        print(f"amft files {args.file_action}: {error.detail}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        return unreachable(f"amft files {args.file_action}", error)
    except OSError as error:
        sys.exit(f"amft files upload: cannot read {args.path}: {error}")
    print(answer["source"])
    print(json.dumps(answer, default=str), file=sys.stderr)
    return 0


def submit(amft, args) -> int:
    import yaml

    try:
        spec = yaml.safe_load(args.spec.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        sys.exit(f"amft jobs submit: cannot read {args.spec}: {error}")
    job = amft.jobs.create(spec)
    print(job.id)
    return watch(amft, args, job.id) if args.watch else 0


def list_jobs(amft, args) -> int:
    page = amft.jobs.list(limit=args.limit, status=args.status)
    print(f"{'id':<32}  {'status':<9}  {'method':<13}  {'model':<22}  {'step':>11}  {'mu':>6}  {'reward':>6}")
    for job in page.jobs:
        step = f"{job.progress.step}/{job.progress.total_steps}"
        print(f"{job.id:<32}  {job.status:<9}  {job.method or '':<13}  {job.model or '':<22}  {step:>11}  "
              f"{_num(job.latest.mu):>6}  {_num(job.latest.reward_mean):>6}")
    return 0


def show(amft, args) -> int:
    print(amft.jobs.get(args.job_id).model_dump_json(indent=2))
    return 0


def watch(amft, args, job_id: str | None = None) -> int:
    from cli.watch import watch_job

    return EXIT_CODES.get(watch_job(amft, job_id or args.job_id), 1)


def cancel(amft, args) -> int:
    job = amft.jobs.cancel(args.job_id)
    print(f"{job.id} {job.status}{' (cancel requested)' if job.cancel_requested and not job.finished else ''}")
    return 0


def logs(amft, args) -> int:
    for event in amft.jobs.events(args.job_id):
        print(f"{event.get('created_at', '')}  {event.get('kind', ''):<16}  {event.get('message', '')}")
    return 0


def checkpoints(amft, args) -> int:
    for row in amft.jobs.checkpoints(args.job_id):
        print(f"{args.job_id}:{row['step']}  {row['created_at']}")
    return 0


def metrics(amft, args) -> int:
    points = amft.jobs.metrics(args.job_id, names=args.names.split(",") if args.names else None)
    if not args.csv:
        for point in points:
            print(json.dumps(point))
        return 0
    columns = list(dict.fromkeys(["step", *(name for point in points for name in point)]))
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(points)
    return 0


def generate(amft, args) -> int:
    answer = amft.generate(args.model, [args.prompt], max_tokens=args.max_tokens, temperature=args.temperature)
    print(answer["results"][0]["completions"][0]["text"])
    print(f"({answer['model']})", file=sys.stderr)
    return 0


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


ACTIONS = {"submit": submit, "list": list_jobs, "show": show, "watch": watch, "cancel": cancel, "logs": logs,
           "checkpoints": checkpoints, "metrics": metrics, "generate": generate}
