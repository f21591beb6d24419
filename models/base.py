"""Base class of the model zoo: a small Sonnet-v1 style module."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from models.tf_compat import tf


class FrameModel:
    """A frame-level video classifier.

    Call: model_input [B, T, sum(feature_sizes)] (per-frame L2-normalised),
    num_frames [B] int32, is_training (python bool) -> probabilities [B, C].
    Variables are created with tf.get_variable inside the caller's variable
    scope (``tower`` for a single model, ``model<i>`` in the ensemble).

    DEFAULTS lists every hyper-parameter with its original value; a preset
    in models.registry may override some of them, and the command line may
    override any of them.
    """

    DEFAULTS: Dict[str, Any] = {}

    def __init__(self, num_classes: int, feature_sizes: Sequence[int], **hparams: Any):
        unknown = set(hparams) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no hyper-parameter(s) "
                             f"{sorted(unknown)}")
        self.num_classes = num_classes
        self.feature_sizes = list(feature_sizes)
        self.hparams = {**self.DEFAULTS, **hparams}

    @property
    def samples_frames_randomly(self) -> bool:
        """True when predictions depend on a random draw of frames (such a
        model is tiled at inference; a deterministic one, like the GRU, is not)."""
        return self.hparams.get("frame_sampling", "none") == "random"

    def __call__(self, model_input: tf.Tensor, num_frames: tf.Tensor, is_training: bool,
                 fingerprints: Optional[tf.Tensor] = None) -> tf.Tensor:
        """fingerprints [B, 2] (inference): a random frame draw depends only
        on the video (models.layers.sample_frame_indices)."""
        raise NotImplementedError

    @property
    def supports_shared_frame_work(self) -> bool:
        """True when ``predict_tiles`` can compute the per-frame work once for
        all tiles (the frame-sampling pooled models); False for the rest."""
        return False

    def predict_tiles(self, model_input: tf.Tensor, num_frames: tf.Tensor, tile_num: int,
                      indices=None, seed=None, fingerprints=None) -> tf.Tensor:
        """Inference on tile_num independent draws of frames -> [tile_num*B, C]
        (row t*B + b), as calling the model on the input tiled tile_num times."""
        raise NotImplementedError(f"{type(self).__name__} has no shared-frame-work path")
