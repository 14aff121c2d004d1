"""Synthetic data made here, as real MP4 files: moving shapes (shapes.py), AVA-style actors
(ava.py), and real footage played forwards or backwards (arrow_of_time.py)."""
