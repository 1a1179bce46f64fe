"""`streamer eval --images DIR --masks DIR`: the model card's metrics on a user's own data set.

Images (or, with --predictions, mattes made elsewhere) are paired with ground-truth mattes by
file stem; files without a partner are listed one line each and left out. The network's mattes
are scored as 8-bit PNGs exactly as `streamer image --format mask` writes them, so the figures
describe what a user gets. The report and contact sheet are never written over an existing file
unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from streamer.commands.image import add_engine_options, build_engine, read_image, write_image
from streamer.commands.options import named
from streamer.errors import EXIT_DAMAGED_INPUT, ConfigError, MediaError
from streamer.evaluate import METRICS, Evaluation, fit_to_truth, format_summary
from streamer.sinks.paths import check_end_outputs, write_json
from streamer.sources.base import InputDamage
from streamer.sources.images import IMAGE_SUFFIXES

SHEET_HEIGHT = 192
"""Height of one contact-sheet tile; tiles keep the truth's aspect ratio."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score mattes against ground truth with the model card's metrics",
        description=__doc__.split("\n\n")[0],
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=named, help="folder of input images: the network makes the mattes")
    source.add_argument(
        "--predictions", type=named, help="folder of mattes made elsewhere (grey, or RGBA: alpha)"
    )
    p.add_argument(
        "--masks", required=True, type=named, help="folder of ground-truth mattes (matched by file stem)"
    )
    p.add_argument(
        "--report", type=named, help="write the figures, per-image scores and settings as JSON here"
    )
    p.add_argument("--sheet", type=named, help="write a PNG contact sheet of the worst images here")
    p.add_argument("--worst", type=int, default=5, help="how many worst images to list (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report or sheet")
    add_engine_options(p)
    p.set_defaults(handler=run)


def read_matte(path: Path) -> np.ndarray:
    """A matte as uint8 (H, W): the alpha of an RGBA file, else grey as the official evaluation
    reads it (OpenCV's grey conversion, 16-bit files scaled to 8 bits)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read {path}")
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[..., 3]
        return alpha if alpha.dtype == np.uint8 else (alpha // 257).astype(np.uint8)
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ValueError(f"cannot read {path}")
    return grey


def list_by_stem(folder: str, option: str) -> dict[str, Path]:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise MediaError(f"{option} {folder}: not a folder (pass a folder of images)")
    found: dict[str, Path] = {}
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        if file.stem in found:
            raise ConfigError(
                f"{option} {folder}: {found[file.stem].name} and {file.name} share a name "
                "(keep one file per name)"
            )
        found[file.stem] = file
    if not found:
        raise MediaError(f"{option} {folder}: no images in it (png, jpg, webp, bmp or tif)")
    return found


def pair_up(
    inputs: dict[str, Path], masks: dict[str, Path]
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pairs sorted by stem, and one line for each file without a partner."""
    pairs = [(stem, inputs[stem], masks[stem]) for stem in sorted(inputs.keys() & masks.keys())]
    unmatched = [f"no ground truth for {inputs[s]}" for s in sorted(inputs.keys() - masks.keys())]
    unmatched += [f"no input for {masks[s]}" for s in sorted(masks.keys() - inputs.keys())]
    return pairs, unmatched


def network_matte(engine, image: torch.Tensor) -> np.ndarray:
    """The 8-bit matte `streamer image --format mask` writes for this image."""
    from streamer.compose.compositor import to_uint8

    return to_uint8(engine.predict(image)).cpu().numpy()


def error_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """RGB picture of |prediction - truth|: dark where right, bright yellow/white where wrong."""
    diff = cv2.absdiff(pred, gt)
    return cv2.cvtColor(cv2.applyColorMap(diff, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def contact_sheet(rows: list[dict]) -> np.ndarray:
    """One row per image: input (grey if unknown), truth, prediction, error map; name above."""
    lines = []
    for row in rows:
        gt, pred = row["gt"], row["pred"]
        h = SHEET_HEIGHT
        w = max(1, round(gt.shape[1] * h / gt.shape[0]))
        image = row.get("image")
        tiles = [
            image if image is not None else np.full((*gt.shape, 3), 96, np.uint8),
            cv2.cvtColor(gt, cv2.COLOR_GRAY2RGB),
            cv2.cvtColor(pred, cv2.COLOR_GRAY2RGB),
            error_map(pred, gt),
        ]
        tiles = [cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA) for t in tiles]
        caption = np.zeros((22, 4 * w + 6, 3), np.uint8)
        text = f"{row['name']}  MAE {row['MAE']:.3f}  S {row['S']:.3f}"
        cv2.putText(caption, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        gap = np.zeros((h, 2, 3), np.uint8)
        body = np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2], gap, tiles[3]], axis=1)
        lines += [caption, body]
    width = max(line.shape[1] for line in lines)
    return np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in lines])


def check_outputs(args, sources: list[Path]) -> list[Path]:
    outputs = [Path(p).expanduser() for p in (args.report, args.sheet) if p]
    if args.sheet and Path(args.sheet).suffix.lower() != ".png":
        raise ConfigError(f"--sheet {args.sheet}: the contact sheet is a PNG (name it .png)")
    check_end_outputs(outputs, sources, args.overwrite)
    return outputs


def run(args: argparse.Namespace) -> int:
    if args.worst < 0:
        raise ConfigError(f"--worst {args.worst}: must be 0 or more")
    network = args.images is not None
    inputs = list_by_stem(
        args.images if network else args.predictions, "--images" if network else "--predictions"
    )
    masks = list_by_stem(args.masks, "--masks")
    pairs, unmatched = pair_up(inputs, masks)
    for line in unmatched:
        print(f"streamer: {line}", file=sys.stderr)
    if not pairs:
        raise MediaError(
            f"no file names in common between {args.images or args.predictions} and {args.masks}"
        )
    check_outputs(args, [p for _, a, b in pairs for p in (a, b)])
    engine = build_engine(args) if network else None

    evaluation = Evaluation()
    damage = InputDamage(args.images or args.predictions, files_expected=len(pairs))
    keep: list[dict] = []  # the current worst pairs, with pixels for the contact sheet
    for stem, source, truth in tqdm(pairs, unit="image", disable=len(pairs) < 2 or None):
        try:
            gt = read_matte(truth)
        except (OSError, ValueError):
            damage.files_lost.append(str(truth))
            continue
        try:
            image = read_image(source) if network else None
            pred = network_matte(engine, image) if network else read_matte(source)
        except (OSError, ValueError):
            damage.files_lost.append(str(source))
            continue
        evaluation.add(stem, pred, gt)
        if args.sheet and args.worst:
            row = evaluation.per_image()[-1]
            row.update(gt=gt, pred=fit_to_truth(pred, gt), image=None)
            if image is not None:
                row["image"] = cv2.resize(image.numpy(), (gt.shape[1], gt.shape[0]))
            keep = sorted([*keep, row], key=lambda r: (-r["MAE"], r["S"]))[: args.worst]
    if not len(evaluation):
        raise MediaError(f"none of the {len(pairs)} image pairs could be read (check the files)")

    summary = evaluation.summary()
    print(f"{len(evaluation)} image pairs")
    print(format_summary(summary))
    worst = evaluation.worst(args.worst)
    if worst:
        print(f"worst {len(worst)} by MAE:")
        for row in worst:
            print(
                f"  {row['name']}  MAE {row['MAE']:.4f}  S {row['S']:.4f}  wF {row['wF']:.4f}  HCE {row['HCE']:.0f}"
            )
    if args.report:
        settings = {"source": "network" if network else "predictions"}
        if network:
            settings.update(
                variant=args.variant,
                weights=args.weights,
                size="auto" if engine.params.auto_size_pixels else list(engine.size),
                auto_size_pixels=engine.params.auto_size_pixels,
                device=str(engine.device),
                dtype=str(engine.dtype).removeprefix("torch."),
                patch_order=engine.model.patch_order if hasattr(engine.model, "patch_order") else None,
            )
        report = {
            "metrics": summary,
            "labels": dict(METRICS),
            "count": len(evaluation),
            "settings": settings,
            "worst": worst,
            "images": evaluation.per_image(),
            "unmatched": unmatched,
            "unreadable": damage.files_lost,
        }
        write_json(report, Path(args.report).expanduser())
        print(f"streamer: wrote {args.report}", file=sys.stderr)
    if args.sheet and keep:
        write_image(torch.from_numpy(contact_sheet(keep)), Path(args.sheet).expanduser())
        print(
            f"streamer: wrote {args.sheet} (worst {len(keep)}: input, truth, prediction, error)",
            file=sys.stderr,
        )
    if damage:
        print(f"streamer: warning: {damage.summary()}", file=sys.stderr)
        return EXIT_DAMAGED_INPUT
    return 0
