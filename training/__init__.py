"""The shared library of the stages, in four tiers: a module imports from its
own tier or the ones above it, never below (tests/unit/test_architecture.py).

1. foundations -- no state, no TensorFlow graph:
   cli (UserError, the one-line exits, run_main), progress (the progress line, Log),
   metrics (GAP@20 and friends in numpy), train_config (TrainConfig), flags (the
   shared flag table), paths (path checks), locks (one writer per output), losses,
   quantize (int8 storage), submission (the CSV format), stage_registry (the stages).
2. records -- what the stages write and read on disk:
   model_flags (ModelFlags), checkpoints (listing, atomic writes), checkpoint_fit
   (does this checkpoint fit this graph?), train_dir (the trainer's dir),
   readers (TFRecord readers, the input pipeline), segment_readers (2019
   segment-rated records), record_layouts (the Reader registry), teacher_records,
   intervals (per-video records, bootstrap intervals), eval_results (every
   evaluation of a dir, video level and 2019 segments), weights_file
   (stacking's weights), stage_files (stage files as typed records).
3. graphs -- TensorFlow graphs built from those records:
   model_builder (a model from model_flags.json), precision (bfloat16
   storage), bn_statistics, members (an ensemble's member dirs), member_graph
   (the tiled ensemble graph), train_graph (towers, loss, optimizer).
4. runners -- the loops and entry points:
   train, distributed, eval, predict (also the scores at 2019 rated pairs),
   synthetic, synthetic_segments, frames_from_videos, segment_refine
   (video-level refinement of 2019 segment scores).
"""
from typing import Dict, Tuple

TIERS: Dict[str, Tuple[str, ...]] = {
    "foundations": ("cli", "progress", "metrics", "train_config", "flags", "paths", "locks",
                    "losses", "quantize", "submission", "stage_registry"),
    "records": ("model_flags", "checkpoints", "checkpoint_fit", "train_dir", "readers",
                "segment_readers", "record_layouts", "teacher_records", "intervals",
                "eval_results", "weights_file", "stage_files"),
    "graphs": ("model_builder", "precision", "bn_statistics", "members", "member_graph",
               "train_graph"),
    "runners": ("train", "distributed", "eval", "predict", "synthetic", "synthetic_segments",
                "frames_from_videos", "segment_refine"),
}
