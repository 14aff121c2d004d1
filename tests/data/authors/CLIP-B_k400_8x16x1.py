# CLIP-B_k400_8x16x1.py of github:MCG-NJU/ZeroI2V at f091983e3fed (Apache-2.0):
# its model, test annotation file and test pipeline, built in so that a checkpoint imports
# with the config's name alone. Dropped: the runtime `_base_` and the file-client arguments
# (storage settings that change no pixel).

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='ViT_Zero_CLIP',
        pretrained='your_clip_path',
        input_resolution=32,
        patch_size=16,
        num_frames=8,
        width=768,
        layers=12,
        heads=12,
        adapter_scale=0.5,
        num_tadapter=2,
        stdha_cfg=dict(shift_div=12, divide_head=False)),
    cls_head=dict(
        type='I3DHead',
        in_channels=768,
        num_classes=400,
        spatial_type='avg',
        dropout_ratio=0.5,
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        mean=[122.769, 116.74, 104.04],
        std=[68.493, 66.63, 70.321],
        format_shape='NCTHW'))

ann_file_test = 'data/kinetics400/kinetics400_val_list_videos.txt'

test_pipeline = [
    dict(type='DecordInit', io_backend='ceph'),
    dict(
        type='SampleFrames',
        clip_len=8,
        frame_interval=16,
        num_clips=3,
        test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='Flip', flip_ratio=0),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
