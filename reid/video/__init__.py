"""Camera footage to gallery entries: video sources, person detection, tracking, crop quality, embedding.

``tools/demo_video.py`` wires these together (see :mod:`reid.video.pipeline`); ``tools/eval_mot.py`` scores
tracking results with :mod:`reid.video.mot_metrics`.
"""
