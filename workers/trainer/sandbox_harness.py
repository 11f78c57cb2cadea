"""Runs INSIDE the grader sandbox (never imported by the worker): limit itself, load the
user's grader file, call `reward(completions, **columns)`, write {"scores": [...]} or
{"error": "..."} as JSON to the original stdout. The user's prints go to stderr.

argv: harness.py GRADER_PATH CPU_SECONDS MEMORY_BYTES MAX_PROCESSES; stdin: {"completions", "columns"}.
"""

import json
import os
import resource
import sys
import traceback


def main() -> None:
    grader_path, cpu, memory, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    me = os.getpid()
    payload = json.loads(sys.stdin.read())
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # user output must not corrupt the result channel
    # Soft and hard limits alike, so user code cannot raise them again.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        namespace = {"__name__": "grader", "__file__": grader_path}
        with open(grader_path, encoding="utf-8") as source:
            exec(compile(source.read(), grader_path, "exec"), namespace)  # noqa: S102 - the sandbox's purpose
        reward = namespace.get("reward")
        if not callable(reward):
            raise TypeError("the grader file defines no function `reward(completions, **columns)`")
        scores = reward(payload["completions"], **payload["columns"])
        result = {"scores": [float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else repr(s) for s in scores]}
    except BaseException as error:  # noqa: BLE001 - reported to the worker as the grader's error
        last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        where = f" (line {last[0].lineno})" if last and last[0].filename == grader_path else ""
        result = {"error": f"{type(error).__name__}: {error}{where}"[:1000]}
    if os.getpid() != me:  # a child the grader forked: only the harness itself may answer
        os._exit(1)
    out.write(json.dumps(result))
    out.flush()


main()
