"""`streamer image INPUT... -o OUT`: mattes, cut-outs or composites of still images.

An image that cannot be read is skipped; the others are still processed, and the run ends with
one warning line naming the skipped files and exit status 3. Existing outputs are only replaced
with --overwrite; each is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from streamer.commands import options
from streamer.errors import EXIT_DAMAGED_INPUT, ConfigError, MediaError
from streamer.sinks.paths import partial_path, refuse_input_as_output, remove_quietly
from streamer.sources.base import InputDamage
from streamer.sources.images import IMAGE_SUFFIXES
from streamer.stills import TooLarge, read_rgb

FORMATS = {"mask": "matte", "cutout": "rgba", "composite": "color"}
"""--format -> compositor mode."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "image",
        help="remove the background of still images (mask, cut-out or composite)",
        description=__doc__.split("\n\n")[0],
    )
    options.add_inputs(p, "image files, folders or globs ('shots/*.jpg')")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=options.named,
        help="output folder, or a file name for a single input",
    )
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="cutout",
        help="mask: grey matte PNG; cutout: RGBA PNG (default); composite: on --color",
    )
    p.add_argument("--color", help="background of --format composite (name, #rrggbb or r,g,b; default white)")
    options.add_config_options(p)
    add_engine_options(p)
    p.add_argument("--overwrite", action="store_true", default=None, help="replace existing output files")
    p.set_defaults(handler=run)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The options `build_engine` reads (model.*), with the defaults of a one-off run on stills."""
    options.add_model_options(
        p,
        size_help="network input HxW, multiples of 32 (default: the variant's training size, 1024x1024 "
        "for most), or auto: each image's aspect ratio within that many pixels (for --variant dynamic)",
    )


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files in the given order; folders contribute their images, globs their matches, both sorted."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not matches:
                raise MediaError(f"no files match {item} (check the pattern)")
            paths += matches
        else:
            raise MediaError(f"input not found: {item} (check the path)")
    if not paths:
        raise MediaError(f"no images found in {' '.join(inputs)} (pass image files, a folder or a glob)")
    return list(dict.fromkeys(paths))


def plan_outputs(paths: list[Path], output: str, fmt: str) -> list[Path]:
    out = Path(output).expanduser()
    if out.suffix.lower() in IMAGE_SUFFIXES:
        if len(paths) != 1:
            raise ConfigError(f"-o {output} is a file but there are {len(paths)} inputs (pass a folder)")
        if fmt == "cutout" and out.suffix.lower() not in (".png", ".webp", ".tif", ".tiff"):
            raise ConfigError(f"-o {output}: a cutout has transparency (use .png or .webp)")
        return [out]
    names: dict[str, int] = {}
    targets = []
    for path in paths:
        seen = names.get(path.stem, 0)
        names[path.stem] = seen + 1
        # Same-named inputs from different folders must not overwrite each other.
        targets.append(out / (path.stem + (f"-{seen + 1}" if seen else "") + ".png"))
    return targets


def read_image(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_rgb(path))


def to_pil(picture: torch.Tensor) -> Image.Image:
    """Compositor output (H, W, 1|3|4) as a grey, RGB or RGBA picture."""
    array = picture.numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def write_image(picture: torch.Tensor, path: Path) -> None:
    image = to_pil(picture)
    partial = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(partial, format=Image.registered_extensions()[path.suffix.lower()])
        os.replace(partial, path)  # a reader never sees half an image
    except OSError as err:
        raise MediaError(f"cannot write {path}: {err.strerror or err} (check the output folder)") from err
    finally:
        remove_quietly(partial)


IMAGE_OPTIONS = {"color": ("composite", "color"), "overwrite": ("output", "overwrite")}


def image_config(args: argparse.Namespace):
    """The config of a run on stills (also `streamer eval`): --config, --set and the options,
    with the defaults of stills where neither chose: the variant's own training size, and a
    white background for --format composite."""
    from streamer.config import default_unset, load_config, merge_params
    from streamer.model import VARIANTS

    overrides = options.overrides_from_args(args, options.MODEL_OPTIONS, IMAGE_OPTIONS)
    auto = (getattr(args, "size", None) or "").strip().lower() == "auto"
    if auto:
        overrides["model"]["size"] = None
    fmt = getattr(args, "format", None)
    if fmt is not None:
        overrides.setdefault("composite", {})["mode"] = FORMATS[fmt]
    config = load_config(getattr(args, "config", None), overrides)
    model = config.model
    trained = VARIANTS[model.variant].size
    if auto:  # the release's own pixel count is the budget
        model = merge_params(model, "model", {"auto_size_pixels": trained[0] * trained[1]})
    config.sections["model"] = default_unset(model, "model", {"size": trained})
    config.sections["composite"] = default_unset(config.composite, "composite", {"color": "white"})
    return config


def build_engine(args: argparse.Namespace):
    """The engine of the model and backend options (also `streamer eval`)."""
    from streamer.engine import MattingEngine

    return MattingEngine.from_params(image_config(args).model)


def build(args: argparse.Namespace, config=None):
    """(engine, compositor) of `config` (by default the one the options make)."""
    from streamer.compose.compositor import Compositor
    from streamer.engine import MattingEngine

    config = config or image_config(args)
    engine = MattingEngine.from_params(config.model)
    return engine, Compositor(config.composite, engine.device)


def make_compositor(fmt: str, color, device):
    """The Compositor of an output format (mask, cutout, composite on `color`), as the options
    make it (`image_config`): the image API's (`streamer.live.api`)."""
    from streamer.compose.compositor import CompositeParams, Compositor
    from streamer.config import merge_params

    params = merge_params(CompositeParams(), "composite", {"mode": FORMATS[fmt], "color": color})
    return Compositor(params, device)


def run(args: argparse.Namespace) -> int:
    paths = collect_inputs(args.inputs)
    targets = plan_outputs(paths, args.output, args.format)
    refuse_input_as_output(targets, paths)
    config = image_config(args)
    existing = [t for t in targets if t.exists()]
    if existing and not config.output.overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ConfigError(f"output exists: {existing[0]}{more} (pass --overwrite to replace)")
    engine, compositor = build(args, config)
    damage = InputDamage(" ".join(args.inputs), files_expected=len(paths))
    written: list[Path] = []
    first_error: Exception | None = None
    bar = tqdm(list(zip(paths, targets, strict=True)), unit="image", disable=len(paths) < 2 or None)
    for path, target in bar:
        try:
            image = read_image(path)
        except (OSError, ValueError) as err:
            damage.files_lost.append(str(path))
            first_error = first_error or err
            continue
        picture = compositor(image, engine.predict(image), 0.0)
        write_image(picture, target)
        written.append(target)
    bar.close()
    if not written:  # every input was lost: a failure, not a finished job with damage
        lost = damage.files_lost
        if isinstance(first_error, TooLarge) and len(lost) == 1:
            raise MediaError(str(first_error))
        if len(lost) == 1:
            raise MediaError(f"cannot read image {lost[0]}: not an image or damaged (check the file)")
        raise MediaError(
            f"none of the {len(lost)} images could be read ({lost[0]}, ...): damaged or not images"
        )
    print(f"streamer: {describe_written(written, args.format)}", file=sys.stderr)
    if damage:
        print(f"streamer: warning: {damage.summary()}", file=sys.stderr)
        return EXIT_DAMAGED_INPUT
    return 0


KINDS = {"mask": "grey matte PNG", "cutout": "RGBA cut-out PNG", "composite": "composite PNG"}


def describe_written(written: list[Path], fmt: str) -> str:
    """'wrote 3 RGBA cut-out PNGs to out/' or 'wrote out/a.png (grey matte PNG)'."""
    kind = KINDS[fmt] if written[-1].suffix.lower() == ".png" else KINDS[fmt][:-4]
    if len(written) == 1:
        return f"wrote {written[0]} ({kind})"
    folders = sorted({str(p.parent) for p in written})
    where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
    return f"wrote {len(written)} {kind}s to {where}"
