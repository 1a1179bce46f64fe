"""`streamer doctor`: what is ready and what to fix before going live."""

from __future__ import annotations

import argparse

from streamer import doctor

EPILOG = (
    "One line per check: OK, WARN or FAIL, with the fix. Exit status 1 when a required check fails "
    "(Python, torch, PyAV, libx264, OpenCV); the others (GPU, cached weights, virtual camera, webcams, "
    "other codecs, aiortc) only warn, since each disables one feature."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check GPU, weights, virtual camera, webcams and codecs before going live",
        description="Check what streamer needs and say how to fix what is missing.",
        epilog=EPILOG,
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return doctor.report(doctor.run_checks())
