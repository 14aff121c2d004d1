# CLIP-B_sthv2_u16.py of github:MCG-NJU/ZeroI2V at f091983e3fed (Apache-2.0):
# its model, test annotation file and test pipeline, built in so that a checkpoint imports
# with the config's name alone. Dropped: the runtime `_base_` and the file-client arguments
# (storage settings that change no pixel).

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='ViT_Zero_CLIP_ablation',
        pretrained='your_clip_path',
        input_resolution=224,
        patch_size=16,
        num_frames=16,
        width=768,
        layers=12,
        heads=12,
        dropout_rate=0,
        adapter_scale=1,
        num_tadapter=2,
        stdha_cfg=dict(
            shift_div=12,
            divide_head=False,
            long_shift_div=12,
            long_shift_right=True)),
    cls_head=dict(
        type='I3DHead',
        in_channels=768,
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
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len=16, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 224)),
    dict(type='ThreeCrop', crop_size=224),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
