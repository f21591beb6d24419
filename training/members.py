"""Members: the model dirs an ensemble (or stacking) is made of (their
weights file: training.weights_file).

A member dir is any model dir of this pipeline (train, SWA or bfloat16 dir):
``model_flags.json`` plus ``model.ckpt-<step>``; its latest checkpoint is
used. All members of one ensemble must read the same features and predict
the same classes (MATCH_KEYS).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from training import (
    checkpoint_fit,
    checkpoints,
    model_builder,
    precision,
    readers,
    record_layouts,
    segment_readers,
)
from training.cli import UserError
from training.model_flags import ModelFlags

# (record_kind compares the layouts, frame or video level included.)
MATCH_KEYS = ("record_kind", "feature_names", "feature_sizes", "num_classes")


@dataclass
class Member:
    model_dir: str
    checkpoint: str
    model_flags: ModelFlags
    dtype: str                     # checkpoint_fit.FLOAT32, BFLOAT16 or INT8
    int8_keys: Tuple[str, ...] = ()   # INT8: the keys stored int8 (training.quantize)
    specs: Optional[checkpoint_fit.Specs] = None   # the checkpoint's, read once by load_member

    def getter_for(self, bf16_compute: Optional[str]):
        """The custom_getter of this member in a --bf16_compute mode (bfloat16
        and int8 checkpoints compute alike; int8 is dequantised at restore)."""
        if self.dtype == checkpoint_fit.FLOAT32:
            return None
        return precision.getter_for_mode(bf16_compute)

    def stored_bf16_in(self, bf16_compute: Optional[str]) -> bool:
        """True when the graph holds float32 variables for bf16 checkpoint
        tensors (cast_at_load): they are restored and saved through
        BFloat16StorageSaveable."""
        return self.dtype != checkpoint_fit.FLOAT32 and \
            precision.check_bf16_compute(bf16_compute) == precision.CAST_AT_LOAD

    @property
    def name(self) -> str:
        return self.model_flags.model


def read_member_flags(model_dir: str) -> ModelFlags:
    """model_flags.json of a model dir (every member key is required by
    ModelFlags.from_json)."""
    return checkpoints.read_model_flags(model_dir)


def check_dir_records(model_dir: str, files: Sequence[str], flag_name: str,
                      labels_needed_by: str = "", compression: str = "auto",
                      record_kind: Optional[str] = None) -> None:
    """readers.check_records with the reader of model_dir's model_flags.json
    (or of record_kind, another kind of its level), before the model is
    loaded (nothing when the dir has no model_flags.json: loading the model
    reports that). Records of another layout name the kind that reads them."""
    reader = _dir_reader(model_dir, record_kind)
    if reader is not None:
        readers.check_records(files, flag_name, reader, labels_needed_by, compression,
                              reader_of=f"the model of {model_dir}",
                              kind_of=record_layouts.kind_of_record)


def check_dir_segment_records(model_dir: str, files: Sequence[str], flag_name: str,
                              segment_size: int, compression: str = "auto") -> None:
    """check_dir_records for --segment_labels: readers.check_records with the
    2019 segment reader of model_dir's model (segment_readers.SegmentReader.like),
    so records without segment_labels, segment_start_times and segment_scores
    (2018 data), or of another layout, are one line naming --<flag_name>.
    Used by training.eval, swa.average and stacking.fit alike."""
    reader = _dir_reader(model_dir)
    if reader is not None:
        readers.check_records(files, flag_name,
                              segment_readers.SegmentReader.like(reader, segment_size),
                              compression=compression,
                              reader_of=f"--segment_labels with the model of {model_dir}",
                              kind_of=record_layouts.kind_of_record)


def _dir_reader(model_dir: str, record_kind: Optional[str] = None):
    """The reader of model_dir's model_flags.json (of record_kind: another
    kind of its level); None when the dir has none (loading the model
    reports that)."""
    if not model_dir or not os.path.isfile(os.path.join(model_dir, checkpoints.MODEL_FLAGS_FILE)):
        return None
    return model_builder.make_reader(read_member_flags(model_dir), record_kind)


def load_member(model_dir: str, checkpoint: Optional[str] = None) -> Member:
    """Reads a member dir: model_flags.json, the checkpoint (default: the
    latest) and its storage dtype."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: no such model dir")
    model_flags = read_member_flags(model_dir)
    checkpoint = checkpoints.find_checkpoint(checkpoint or model_dir)
    specs = checkpoint_fit.checkpoint_specs(checkpoint, model_only=False)
    kind, int8_keys = checkpoint_fit.checkpoint_storage(checkpoint, specs)
    precision.check_dtype_marker(checkpoint, kind, model_flags)
    return Member(os.path.abspath(model_dir), checkpoint, model_flags, kind, tuple(int8_keys),
                  specs)


SignatureValue = Union[bool, int, str, List[str], List[int]]


def feature_signature(model_flags: ModelFlags) -> Dict[str, SignatureValue]:
    """{MATCH_KEYS: value}: what the members of one ensemble share."""
    return {"record_kind": model_flags.layout(),
            "feature_names": model_flags.feature_name_list(),
            "feature_sizes": model_flags.feature_size_list(),
            "num_classes": model_flags.num_classes}


def check_members_agree(members: Sequence[Member]) -> None:
    """All members read the same features and predict the same classes."""
    if not members:
        raise UserError("--model_dirs: no members")
    first = feature_signature(members[0].model_flags)
    for member in members[1:]:
        this = feature_signature(member.model_flags)
        for key in MATCH_KEYS:
            if this[key] != first[key]:
                raise UserError(
                    f"{member.model_dir}: {key}={_show(this[key])} but "
                    f"{members[0].model_dir} has {key}={_show(first[key])}; all members "
                    f"must read the same features and predict the same classes")


def check_no_duplicates(member_dirs: Sequence[str]) -> None:
    seen = set()
    for member_dir in member_dirs:
        real = os.path.realpath(member_dir)
        if real in seen:
            raise UserError(f"--model_dirs: {member_dir} is listed twice (use --weights to "
                            f"weigh it more)")
        seen.add(real)


def _show(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
