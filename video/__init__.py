"""Video decoding, frame sampling and model views, shared by training and the service."""

from video.decode import (
    DamagedVideo,
    DecodeLimits,
    DecodeTimeout,
    EmptyVideo,
    NotAVideo,
    NoVideoStream,
    OverCostLimit,
    VideoError,
    VideoInfo,
    VideoReader,
    VideoTooLarge,
    probe,
    read_frames,
)
from video.sampling import SamplingSpec, dense_clips, uniform_clips
from video.views import (
    ViewSpec,
    load_views,
    make_views,
    normalize,
    resize_short_side,
    spatial_crops,
)

__all__ = [
    "DamagedVideo",
    "DecodeLimits",
    "DecodeTimeout",
    "EmptyVideo",
    "NoVideoStream",
    "NotAVideo",
    "SamplingSpec",
    "VideoError",
    "VideoInfo",
    "VideoReader",
    "OverCostLimit",
    "VideoTooLarge",
    "ViewSpec",
    "dense_clips",
    "load_views",
    "make_views",
    "normalize",
    "probe",
    "read_frames",
    "resize_short_side",
    "spatial_crops",
    "uniform_clips",
]
