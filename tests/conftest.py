import pytest

from model import ZeroI2VConfig
from tests.helpers import TINY


@pytest.fixture
def tiny_cfg() -> ZeroI2VConfig:
    return ZeroI2VConfig(
        backbone=TINY,
        image_size=32,
        num_frames=4,
        num_classes=7,
        temporal_offsets=[1, -1, 2, 0],
        head_dropout=0.0,
    )
