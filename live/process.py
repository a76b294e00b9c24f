"""Entry point of every live process: ``python -m osm.live.process ROLE NAME --home DIR``.

The supervisor starts each process this way; the process reads the system config and endpoints
from the run directory, logs to ``logs/NAME.log`` and exits non-zero with one clear line if it
cannot go on: :data:`~osm.core.errors.EXIT_CONFIG` when it cannot run as configured (a bad setting,
file or name: restarting would fail again, so the supervisor does not), 1 for anything else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from osm.core import config as cfg
from osm.core.errors import CONFIG_ERRORS, EXIT_CONFIG, OsmError
from osm.core.rundir import RunDir

ROLES = {
    "feeder": "osm.live.feeder:Feeder",
    "router": "osm.live.router:Router",
    "trader": "osm.live.trader:Trader",
    "brain": "osm.live.brain:Brain",
}


def service_class(role: str) -> type:
    module, _, name = ROLES[role].partition(":")
    return getattr(importlib.import_module(module), name)


def configure_logging(rundir: RunDir, name: str) -> None:
    handler = logging.FileHandler(rundir.log_path(name))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="osm.live.process")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("name")
    parser.add_argument("--home", required=True)
    args = parser.parse_args(argv)
    rundir = RunDir(args.home)
    os.environ["OSM_HOME"] = str(rundir.home)  # what adapters read their key files under
    configure_logging(rundir, args.name)
    try:
        config = cfg.load(cfg.SystemConfig, rundir.config_path.read_bytes())
        endpoints = rundir.read_endpoints()
        if endpoints is None:
            raise OsmError(f"no endpoints.json in {rundir.home}; start the system with `osm up`")
        service = service_class(args.role)(args.name, rundir, config, endpoints)
        return service.run()
    except OsmError as exc:
        logging.getLogger("osm").error("%s %s cannot start: %s", args.role, args.name, exc)
        print(f"osm {args.role} {args.name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, CONFIG_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
