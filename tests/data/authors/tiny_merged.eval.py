model = dict(
    type='Recognizer3D',
    backbone=dict(type='ViT_Zero_CLIP_eval', input_resolution=32, patch_size=8,
                  num_frames=8, width=64, layers=2, heads=4, stdha_cfg=dict(shift_div=4, shift_stride=2)),
    cls_head=dict(type='I3DHead', in_channels=64, num_classes=5, spatial_type='avg',
                  dropout_ratio=0.5, average_clips='prob'),
    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[122.769, 116.74, 104.04],
                           std=[68.493, 66.63, 70.321], format_shape='NCTHW'))
ann_file_test = 'data/tiny/tiny_val_list_videos.txt'
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=2, num_clips=2, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
