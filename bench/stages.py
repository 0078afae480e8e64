"""Profile of the pipeline, stage by stage: the per-message cost of each step
of bench/pipeline.py, and how much of it is the stage's own computing versus
the database.

Run by hand (not by pytest), from the repository root:

    .venv/bin/python bench/stages.py [--messages 3000] [--database URL]

It stores the bench mix (``bench/pipeline.py``'s messages, not timed through
IMAP), then drains each stage alone in one thread under cProfile: store (the
intake insert), parse, classify, respond, and the outbox to smtp-sink.  For
each it prints milliseconds per message and the share spent in the stage's
pure functions (mail parsing, the model, rendering) -- the part worker
processes can spread over cores.  The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, clean_up, progress, smtp_sink_binary, start_smtp_sink  # noqa: E402
from bench.pipeline import desk_context, message  # noqa: E402
from daemon.config import config_from_dict  # noqa: E402
from daemon.delivery.outbox import drain_outbox  # noqa: E402
from daemon.intake.store import NewMessage, insert_messages  # noqa: E402
from daemon.stages.classify import make_stage as make_classify_stage  # noqa: E402
from daemon.stages.parse import make_stage as make_parse_stage  # noqa: E402
from daemon.stages.respond import make_stage as make_respond_stage  # noqa: E402
from daemon.worker import drain  # noqa: E402
from models.session import transaction  # noqa: E402
from tests.servers import free_port  # noqa: E402

#: The pure computing of each stage, by function name in the profile (cumulative time).
PURE = {
    "parse": ("parse_message",),
    "classify": ("classify",),
    "respond": ("plan", "render", "screen"),
    "outbox": (),
    "store": ("row_tuple",),
}


def profiled(fn, enabled: bool = True):
    """Run ``fn()`` under cProfile (when ``enabled``); return (seconds, stats or None)."""
    if not enabled:
        started, cpu = time.perf_counter(), time.process_time()
        fn()
        profiled.cpu = time.process_time() - cpu  # type: ignore[attr-defined]
        return time.perf_counter() - started, None
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    return time.perf_counter() - started, pstats.Stats(prof)


def cumulative(stats: pstats.Stats, names: tuple[str, ...]) -> float:
    """Return the cumulative seconds of the outermost calls of functions named ``names``."""
    total = 0.0
    for (_file, _line, name), (_cc, _nc, _tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name in names and not any(c[2] in names for c in callers):
            total += ct
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--database", default="", help="PostgreSQL URL (a fresh schema); default a fresh SQLite file")
    parser.add_argument("--no-profile", action="store_true",
                        help="time only (cProfile slows the Python-heavy stages down about 1.5x)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sink_bin = smtp_sink_binary()
    if sink_bin is None:
        progress("needs Postfix's smtp-sink: apt-get install postfix")
        return 2
    root = Path(tempfile.mkdtemp(prefix="acedesk-stages-"))
    sink_port = free_port()
    sink = start_smtp_sink(sink_bin, sink_port)
    schema = ""
    try:
        db_url, schema = bench_database(root, args.database)
        config = config_from_dict({
            "database": {"url": db_url}, "daemon": {"state_dir": str(root / "var")},
            "ingress": {"enabled": False, "port": free_port()},
            "pipeline": {"batch_size": 500},
            "outbound": {"relay_host": "127.0.0.1", "relay_port": sink_port},
            "responders": {"autoreply_max": 1_000_000},
        }, base_dir=str(root))
        ctx = desk_context(config)
        stages = {"parse": make_parse_stage(ctx), "classify": make_classify_stage(ctx),
                  "respond": make_respond_stage(ctx)}
        items = [NewMessage(desk="helpdesk@ace-support.example", source="cli", raw=message(n, "stages"))
                 for n in range(args.messages)]

        def store() -> None:
            for start in range(0, len(items), 500):
                with transaction(ctx.sessions) as s:
                    insert_messages(s, items[start:start + 500])

        figures: dict = {"messages": args.messages, "database": ctx.engine.url.get_backend_name(),
                         "cores": os.cpu_count(), "load_before": os.getloadavg()[0], "stages": {},
                         "profiled": not args.no_profile}
        steps = [("store", store), *((name, lambda st=st: drain(ctx.sessions, [st], config.pipeline))
                                     for name, st in stages.items()),
                 ("outbox", lambda: drain_outbox(ctx.sessions, config))]
        total = 0.0
        for name, fn in steps:
            seconds, stats = profiled(fn, not args.no_profile)
            pure = cumulative(stats, PURE[name]) if PURE[name] and stats is not None else 0.0
            total += seconds
            cpu = getattr(profiled, "cpu", None) if args.no_profile else None
            figures["stages"][name] = {"ms_per_msg": round(1000 * seconds / args.messages, 3),
                                       "cpu_ms_per_msg": round(1000 * cpu / args.messages, 3) if cpu else None,
                                       "pure_share": round(pure / seconds, 2) if seconds else 0.0}
            progress(f"{name:9s} {1000 * seconds / args.messages:7.3f} ms/msg  "
                     f"({args.messages / seconds:7.0f} msgs/s; pure computing {100 * pure / seconds:3.0f}%)")
            if stats is not None and os.environ.get("BENCH_VERBOSE"):
                stats.sort_stats("cumulative").print_stats(12)
        figures["ms_per_msg_total"] = round(1000 * total / args.messages, 3)
        figures["one_core_msgs_per_s"] = round(args.messages / total, 1)
        figures["load_after"] = os.getloadavg()[0]
        ctx.dispose()
        print(json.dumps(figures))
        return 0
    finally:
        clean_up(sink, root, args.database, schema)


if __name__ == "__main__":
    sys.exit(main())
