# CLIP-L_sthv2_u32.py of github:MCG-NJU/ZeroI2V at f091983e3fed (Apache-2.0):
# its model, test annotation file and test pipeline, built in so that a checkpoint imports
# with the config's name alone. Dropped: the runtime `_base_` and the file-client arguments
# (storage settings that change no pixel).

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='ViT_Zero_CLIP_long',
        pretrained='your_clip_path',
        input_resolution=28,
        patch_size=14,
        num_frames=32,
        width=1024,
        layers=24,
        heads=16,
        adapter_scale=1,
        num_tadapter=2,
        stdha_cfg=dict(
            divide_head=False,
            shift1_div=8,
            shift2_div=16,
            shift3_div=16,
            shift3_right=False,
            shift4_div=-1,
            shift4_right=False)),
    cls_head=dict(
        type='I3DHead',
        in_channels=1024,
        num_classes=174,
        spatial_type='avg',
        dropout_ratio=0.5,
        label_smooth_eps=0.1,
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        mean=[122.769, 116.74, 104.04],
        std=[68.493, 66.63, 70.321],
        format_shape='NCTHW'))

ann_file_test = 'data/sthv2/sthv2_val_list_videos.txt'

test_pipeline = [
    dict(type='DecordInit', io_backend='ceph'),
    dict(type='UniformSample', clip_len=32, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 28)),
    dict(type='ThreeCrop', crop_size=28),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
