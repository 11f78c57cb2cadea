"""The `amft` command. Each subcommand lives in its own module with `add_parser(subparsers)`
and a `run(args) -> int`; heavy imports (torch, the API) happen inside `run` so that
`amft --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": "cli.train",  # run the trainer locally on a spec file
    "serve": "cli.serve",  # API + Celery workers on the embedded default or real services
    "keys": "cli.keys",  # API key management
    "demo": "cli.demo",  # serve, submit a demo AMFT job, stream mu/reward, generate
    "jobs": "cli.jobs",  # `amft jobs ...` and `amft files ...` on a running service (client/)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amft", description="AMFT training service.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # subcommand not built yet
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
