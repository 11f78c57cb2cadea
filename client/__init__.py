"""Python client of the AMFT HTTP API (httpx; no torch, no fastapi).

    from client import Client
    amft = Client("http://127.0.0.1:8000", "amft_...")
    job = amft.jobs.create({"method": "amft", "model": "builtin:tiny"})
    final = amft.jobs.wait(job["id"])
"""

from client.api import Client
from client.transport import ApiError

__all__ = ["ApiError", "Client"]
