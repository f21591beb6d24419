"""Segment fine-tuning: a video-level model trained a few steps on 2019 rated
segments (python -m segment_finetune.train; docs/segments.md)."""
