model = dict(
    type='Recognizer3D',
    backbone=dict(type='ViT_Zero_CLIP_long', pretrained='your_clip_path', input_resolution=32,
                  patch_size=16, num_frames=8, width=256, layers=6, heads=8, adapter_scale=1,
                  num_tadapter=2,
                  stdha_cfg=dict(divide_head=False, shift1_div=8, shift2_div=8, shift3_div=8,
                                 shift3_right=True, shift4_div=-1, shift4_right=False)),
    cls_head=dict(type='I3DHead', in_channels=256, num_classes=7, spatial_type='avg',
                  dropout_ratio=0.5, label_smooth_eps=0.1, average_clips='prob'),
    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[122.769, 116.74, 104.04],
                           std=[68.493, 66.63, 70.321], format_shape='NCTHW'))
ann_file_test = 'data/tiny_uniform/val_list_videos.txt'
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='UniformSample', clip_len=8, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='ThreeCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
