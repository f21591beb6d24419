"""The upload: the exported model files, their size against the limit, and
the .tgz archive (docs/formats.md 3).

An exported dir holds ``inference_model.{data-00000-of-00001,index,meta}``
(the model variables, bfloat16 where the member was, and the graph with the
collections input_batch_raw, num_frames and predictions), TensorFlow's
``checkpoint`` state file and ``model_flags.json``. The upload .tgz holds
model_flags.json and the three inference_model files at its root.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence

from models.tf_compat import tf
from training import checkpoints
from training.cli import UserError
from training.predict import INFERENCE_MODEL, LoadedModel
from training.progress import Log

SIZE_LIMIT_BYTES = 1 << 30          # the Kaggle 2018 limit read as 1 GiB (docs/original.md 12.27)
UPLOAD_FILES = (checkpoints.MODEL_FLAGS_FILE, f"{INFERENCE_MODEL}.data-00000-of-00001",
                f"{INFERENCE_MODEL}.index", f"{INFERENCE_MODEL}.meta")



def export_files(directory: str) -> List[str]:
    """The inference_model.* files of a dir (what the upload must hold)."""
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.startswith(INFERENCE_MODEL + "."))


def exported_bytes(directory: str) -> int:
    return sum(os.path.getsize(path) for path in export_files(directory))


def export_model(sess: tf.Session, directory: str, variables: Sequence[Any]) -> int:
    """Writes inference_model.{data-00000-of-00001,index,meta} (+ `checkpoint`)
    into directory; returns the bytes of the inference_model.* files.

    The Saver holds the model variables only (no global_step; pass
    EnsembleGraph.export_var_list, whose BFloat16StorageSaveables keep
    cast_at_load members bf16 on disk); the MetaGraph is that of the
    session's graph without the members' loading savers.
    """
    prefix = os.path.join(directory, INFERENCE_MODEL)
    # Saver.export_meta_graph exports the *default* graph: make it the session's.
    with sess.graph.as_default():
        saver = tf.train.Saver(list(variables), name="save", sharded=False,
                               save_relative_paths=True, write_version=tf.train.SaverDef.V2)
        saver.save(sess, prefix, write_meta_graph=False, write_state=True)
        saver.export_meta_graph(prefix + ".meta", clear_devices=True,
                                clear_extraneous_savers=True)
    return exported_bytes(directory)


def limit_text(limit: int) -> str:
    return f"{limit:,}-byte" + (" (1 GiB)" if limit == 1 << 30 else "")


def format_size(num_bytes: int, limit: Optional[int] = None) -> str:
    """The size against the limit and against both readings of "1 GB"
    (10^9 and 2^30 bytes: no public source says which the challenge meant)."""
    limit = limit or SIZE_LIMIT_BYTES
    return (f"{num_bytes:,} bytes ({num_bytes / 1e6:.2f} MB, {num_bytes / 2**20:.2f} MiB) "
            f"of the {limit_text(limit)} limit, {100.0 * num_bytes / limit:.1f}%; "
            f"{100.0 * num_bytes / 1e9:.1f}% of 10^9 bytes, "
            f"{100.0 * num_bytes / 2**30:.1f}% of 2^30 bytes")


def _safe_members(tar: tarfile.TarFile, path: str) -> List[tarfile.TarInfo]:
    chosen = []
    for info in tar.getmembers():
        name = info.name
        parts = name.replace("\\", "/").split("/")
        if os.path.isabs(name) or name.startswith("/") or ".." in parts:
            raise UserError(f"--input_model_tgz={path}: member {name!r} points outside the "
                            f"archive; refusing to extract")
        if info.isdir():
            continue
        if not info.isfile():
            raise UserError(f"--input_model_tgz={path}: member {name!r} is not a regular file "
                            f"(links and devices are refused)")
        chosen.append(info)
    return chosen


@contextmanager
def extracted_model_tgz(path: str) -> Iterator[str]:
    """Extracts an upload .tgz into a temporary dir (removed afterwards) and
    yields the dir that holds its model_flags.json."""
    if not os.path.isfile(path):
        raise UserError(f"--input_model_tgz={path}: no such file")
    tmp_dir = tempfile.mkdtemp(prefix="yt8m-model-")
    try:
        try:
            with tarfile.open(path, "r:*") as tar:
                members = _safe_members(tar, path)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp_dir, members=members, filter="data")
                else:  # pragma: no cover (Python < 3.11.4)
                    tar.extractall(tmp_dir, members=members)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UserError(f"--input_model_tgz={path}: not a readable .tgz ({err})") from None
        found = [root for root, _, files in os.walk(tmp_dir)
                 if checkpoints.MODEL_FLAGS_FILE in files]
        if len(found) != 1:
            raise UserError(f"--input_model_tgz={path}: expected one "
                            f"{checkpoints.MODEL_FLAGS_FILE}, found {len(found)}")
        try:
            yield found[0]
        except UserError as err:
            # (A damaged file of the archive: named by its path in the archive.)
            text = str(err)
            if tmp_dir + os.sep not in text:
                raise
            raise UserError(f"--input_model_tgz={path}: "
                            f"{text.replace(tmp_dir + os.sep, '')}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """World-readable regular files without owner names."""
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "", ""
    return info


def write_model_tgz(model: LoadedModel, tgz_path: str, log: Optional[Log] = None,
                    overwrite: bool = True) -> int:
    """Writes the upload .tgz (model_flags.json + inference_model.*) through a
    temporary name; returns the bytes of the inference_model.* files it holds."""
    directory = model.model_dir
    tmp_export = None
    try:
        if model.kind == "single":
            assert model.variables is not None      # open_model sets a single model's
            tmp_export = tempfile.mkdtemp(prefix="yt8m-export-")
            export_model(model.session, tmp_export, model.variables)
            checkpoints.write_model_flags(tmp_export, model.model_flags)
            directory = tmp_export
        for name in UPLOAD_FILES:
            if not os.path.isfile(os.path.join(directory, name)):
                raise UserError(f"{directory}: {name} missing; cannot write "
                                f"--output_model_tgz")
        with checkpoints.atomic_file(tgz_path, overwrite, "output_model_tgz") as tmp_path:
            with tarfile.open(tmp_path, "w:gz") as tar:
                for name in UPLOAD_FILES:
                    tar.add(os.path.join(directory, name), arcname=name, filter=_plain_member)
        size = exported_bytes(directory)
    finally:
        if tmp_export:
            shutil.rmtree(tmp_export, ignore_errors=True)
    if log:
        log(f"wrote {tgz_path}: {format_size(size)}")
    return size
