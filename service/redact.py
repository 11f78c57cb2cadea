"""Server paths out of messages a tenant reads (issue 13, item 5).

Error messages come from exceptions raised deep in the trainer, the data loaders or the
inference engine, and those quote absolute paths of the server (`/srv/amft/artifacts/jobs/
.../step-000010/model.safetensors`, `/opt/venv/lib/python3.11/...`). Before such a message
is stored on a job, an event or an evaluation, or sent in an error body, the deployment's
folders become labels (`<artifacts>/jobs/...`) and any other absolute path keeps only its
last part (`<path>/modeling.py`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from service.settings import Settings

# An absolute POSIX path: starts at a "/" not preceded by a word character, a dot, a
# label's ">" or another path character, e.g. not the "/" of "org/name" or "1/2"; not a
# URL's "//host" nor one of this API's own routes, which messages quote as advice.
API_ROUTES = r"(?:jobs|files|generate|v1|healthz|readyz|metrics|docs|openapi\.json)(?![\w.-])"
ABSOLUTE_PATH = re.compile(r"(?<![\w.>~/-])/(?!/|" + API_ROUTES + r")[^\s'\"`,;:()\[\]{}<>|=]+")


def _folders(settings: Settings) -> list[tuple[str, str]]:
    """(absolute folder, label), longest first, so a folder inside another gets its own label."""
    named = [
        (settings.resolved_artifacts_dir, "<artifacts>"),
        (settings.resolved_models_dir, "<models>"),
        (settings.resolved_cache_dir, "<cache>"),
        (settings.datasets_dir.resolve(), "<datasets>"),
        (settings.home.resolve(), "<home>"),
        (Path(sys.prefix).resolve(), "<python>"),
        (Path.cwd().resolve(), "<app>"),
        (Path.home().resolve(), "<user home>"),
    ]
    pairs = {}
    for folder, label in named:
        for spelling in {str(folder), os.path.abspath(folder)}:
            if spelling not in ("/", "") and spelling not in pairs:
                pairs[spelling] = label
    return sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)


def redact_paths(message: str, settings: Settings) -> str:
    """`message` with the server's absolute paths replaced by a neutral form."""
    for folder, label in _folders(settings):
        message = re.sub(re.escape(folder) + r"(?![\w.-])", label, message)
    message = message.replace("file:///", "file:/")  # file:///etc/x -> file:/etc/x, then redacted below
    return ABSOLUTE_PATH.sub(lambda match: "<path>/" + match[0].rstrip("/").rsplit("/", 1)[-1], message)
