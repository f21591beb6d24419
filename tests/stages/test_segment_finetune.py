"""segment_finetune.train: a bf16 video-level model fine-tuned on rated
segments writes a train dir that swa.average, bfloat16_patch.convert and
training.eval --segment_labels read unchanged; its one-line refusals.

Everything runs through tests/support/cli_driver.py (one process, the
command lines as `python -m ...` runs them)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_CLASSES, segment_data
from support.reliability import assert_user_error, run_cases, snapshot
from training import checkpoints, stage_files, synthetic_segments

pytestmark = pytest.mark.slow

TUNE = ["--batch_size=8", "--max_steps=4", "--save_checkpoint_steps=2", "--num_readers=1",
        "--log_steps=2"]


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    return segment_data(tmp_path_factory, "segment_finetune_data", videos_per_shard=12)


def _without(tmp_path, name, **options):
    """Segment records of the same videos written with options (with_ratings
    or with_labels false); -> the file."""
    return synthetic_segments.write_segment_dataset(
        str(tmp_path / name), videos_per_shard=4, num_classes=TINY_CLASSES, seed=7,
        min_frames=25, max_frames=40, **options)[0]


def _refusals(tiny_models, tiny_data, pattern, tmp_path):
    """[(argv, what the one line names)] of the refused command lines."""
    source = tiny_models["dbof_bf16"]
    other = shutil.copytree(tiny_models["gru_train"], tmp_path / "gru_train")
    copy = shutil.copytree(source, tmp_path / "source_copy")
    out = f"--train_dir={tmp_path / 'refused'}"
    data = f"--train_data_pattern={pattern}"
    return [
        ([f"--source_dir={tiny_data / 'frame'}", out, data], "model_flags.json: missing"),
        ([f"--source_dir={tiny_models['ensemble']}", out, data], "an exported ensemble"),
        ([f"--source_dir={source}", out, "--train_data_pattern="
          + _without(tmp_path, "unrated", with_ratings=False)], "no segment_labels"),
        ([f"--source_dir={source}", out, "--train_data_pattern="
          + _without(tmp_path, "unlabelled", with_labels=False)], "have no labels"),
        ([f"--source_dir={source}", f"--train_dir={other}", data], "a different model"),
        ([f"--source_dir={copy}", f"--train_dir={copy}", data], "is --source_dir"),
        ([f"--source_dir={source}", out, data, "--negative_weight=-1"], "--negative_weight"),
        ([f"--source_dir={source}", out, data, "--max_steps=0"], "--max_steps"),
    ], [other, copy]


def test_finetune_then_swa_convert_and_segment_eval(tiny_models, tiny_data, pattern,
                                                    tmp_path):
    """The fine-tuned dir starts from the source's weights (a bf16 dir: the
    model record kept, float32 now), moves a little, and the next stages
    read it unchanged; each refusal is one line and writes nothing.

    Mutations tried: finetune's warm start replaced by a hook that only
    logs (fresh weights) -> cluster_bn/gamma 0.07 away from the source's;
    model_flags.json kept with checkpoint_dtype bfloat16 -> the record
    comparison failed; swa.average without provenance_of(train_dir) lost
    the fine-tuning's provenance."""
    tuned, swa, int8 = (tmp_path / name for name in ("tuned", "swa", "int8"))
    refusals, untouched = _refusals(tiny_models, tiny_data, pattern, tmp_path)
    before = {str(path): snapshot(path) for path in untouched}
    results = run_cases({
        "segment_finetune.train": {"cases": [
            [f"--source_dir={tiny_models['dbof_bf16']}", f"--train_dir={tuned}",
             f"--train_data_pattern={pattern}", *TUNE]] + [argv for argv, _ in refusals]},
        "swa.average": {"cases": [[f"--train_dir={tuned}", f"--output_dir={swa}",
                                   "--last_n=2"]]},
        "bfloat16_patch.convert": {"cases": [[f"--input_dir={swa}", f"--output_dir={int8}",
                                              "--dtype=int8"]]},
        "training.eval": {"cases": [[f"--train_dir={int8}", f"--eval_data_pattern={pattern}",
                                     "--run_once", "--segment_labels", "--batch_size=20"]]},
    }, tmp_path / "driver")
    tuning, *refused = results["segment_finetune.train"][2]
    assert tuning.returncode == 0, tuning.stderr[-3000:]
    assert "warm start: loaded" in tuning.stdout and "step       4" in tuning.stdout
    assert [step for step, _ in checkpoints.list_checkpoints(str(tuned))] == [2, 4]
    source_record = json.loads(open(f"{tiny_models['dbof_bf16']}/model_flags.json").read())
    source_record.pop("checkpoint_dtype")
    assert json.loads((tuned / "model_flags.json").read_text()) == source_record
    _assert_near_the_source(tiny_models["dbof_bf16"], str(tuned / "model.ckpt-4"))
    for module in ("swa.average", "bfloat16_patch.convert", "training.eval"):
        assert results[module][2][0].returncode == 0, results[module][2][0].stderr[-3000:]
    assert "Segment_MAP" in results["training.eval"][2][0].stdout
    assert (int8 / "segment_eval_results.json").exists()
    # The rated files the weights were fitted on, carried through SWA and int8.
    tuning_choice = stage_files.provenance_for("segment_finetune.train", "fine-tuning", pattern)
    assert tuning_choice.data_files and stage_files.provenance_of(str(int8)) == (tuning_choice,)
    for result, (_, mention) in zip(refused, refusals):
        assert_user_error(result, mention)
    assert not (tmp_path / "refused").exists()
    assert {str(path): snapshot(path) for path in untouched} == before


def _assert_near_the_source(source_dir, checkpoint):
    """Every model variable within 4 Adam steps (and bf16 rounding) of the
    source's; a fresh initialisation is far from it."""
    source = checkpoints.find_checkpoint(source_dir)
    stored = checkpoints.open_checkpoint(source)
    tuned = checkpoints.open_checkpoint(checkpoint)
    names = [name for name in tuned.get_variable_to_shape_map()
             if checkpoints.is_model_variable_key(name) and "moving_" not in name]
    assert names
    for name in names:
        want = stored.get_tensor(name).astype(np.float32)       # (bfloat16 stored)
        got = tuned.get_tensor(name)
        assert np.abs(got - want).max() <= 0.01 + 0.01 * np.abs(want).max(), name
