"""`amft jobs watch`: a live progress bar fed by the job's event stream, with the ETA and
the latest mu, reward and entropy, and one line per job event."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

QUIET_EVENTS = ("checkpoint",)


def watch_job(amft, job_id: str, console: Console | None = None) -> str:
    """Follow the job to its end; returns its final status."""
    console = console or Console()
    job = amft.jobs.get(job_id)
    console.print(f"job {job.id}: {job.method} on {job.model}, {job.progress.total_steps} steps")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[latest]}"))
    status = job.status
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(job.status, total=job.progress.total_steps or None, completed=job.progress.step,
                                 latest="")
        for message in amft.jobs.events(job_id, stream=True):
            data = message["data"]
            if message["event"] == "metrics":
                progress.update(task, completed=data["step"], description=data.get("phase", "running"),
                                latest=latest_text(data))
            elif message["event"] == "event" and data.get("kind") not in QUIET_EVENTS:
                progress.console.print(f"[{data.get('kind')}] {data.get('message')}")
            elif message["event"] == "end":
                status = data["status"]
    final = amft.jobs.get(job_id)
    status = final.status if final.finished else status
    style = "green" if status == "succeeded" else "red"
    console.print(f"job {job_id} [{style}]{status}[/{style}]" + (f": {final.error.message}" if final.error else ""))
    return status


def latest_text(point: dict) -> str:
    parts = []
    for name, label in (("mu", "mu"), ("reward_mean", "reward"), ("entropy", "entropy")):
        value = point.get(name)
        parts.append(f"{label} {value:.3f}" if isinstance(value, (int, float)) else f"{label} -")
    return "  ".join(parts)
