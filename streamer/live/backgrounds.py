"""The backgrounds a page may pick by name: files of the folder the operator named (`--backgrounds`).

A request names a background; it never gives a path. Names are looked up in a fresh listing
of the folder's own files, so nothing outside it (or inside a subfolder) can be reached.
"""

from __future__ import annotations

from pathlib import Path

from streamer.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


class BackgroundFolder:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(
                f"--backgrounds: {folder} is not a folder (name a folder of pictures or videos)"
            )

    def listing(self) -> dict[str, Path]:
        """name -> path of each picture or video directly in the folder."""
        found = {}
        for path in sorted(self.folder.iterdir()):
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES + VIDEO_SUFFIXES and path.is_file() and not path.name.startswith("."):
                found[path.name] = path
        return found

    def entries(self) -> list[dict[str, str]]:
        """What the page lists: each name with the mode that shows it."""
        return [{"name": name, "mode": mode_for(path)} for name, path in self.listing().items()]

    def path(self, name) -> Path:
        listing = self.listing()
        path = listing.get(name) if isinstance(name, str) else None
        if path is None:
            known = ", ".join(listing) or "none: the server was started without pictures"
            shown = repr(name)[:60]
            raise ConfigError(
                f"composite.background: {shown} is not one of this server's backgrounds ({known[:120]})"
            )
        return path


def mode_for(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
