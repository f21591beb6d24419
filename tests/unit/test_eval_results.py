"""eval_results.json and segment_eval_results.json: evaluations keyed by what
they measured, never replaced silently; the earlier format kept; a damaged
file refused in one line naming the file and the key."""
from __future__ import annotations

import json
import os

import pytest

from training import eval_results, intervals
from training.cli import UserError

RESULT = {"gap": 0.5, "hit_at_one": 0.6, "perr": 0.4, "map": 0.3, "loss": 1.5,
          "num_examples": 32}
SETTINGS = {"frame_sampling": None, "seed": 2018, "top_k": 20, "bf16_compute": None}


def add(directory, checkpoint="model.ckpt-10", pattern="validate*.tfrecord", gap=0.5,
        **settings):
    measured = eval_results.measurement(os.path.join(str(directory), checkpoint),
                                        str(directory / pattern), **{**SETTINGS, **settings})
    return eval_results.record(str(directory), measured,
                               intervals.EvalResult.of_videos({**RESULT, "gap": gap}), 1)


def saved(directory) -> dict:
    return json.loads((directory / "eval_results.json").read_text())


def test_each_measurement_is_kept_and_the_latest_is_on_top(tmp_path):
    add(tmp_path, gap=0.1)
    add(tmp_path, "model.ckpt-20", gap=0.2)
    add(tmp_path, pattern="other*.tfrecord", gap=0.3)
    add(tmp_path, bn_statistics="recompute", recompute_batches=5, gap=0.4)
    add(tmp_path, seed=1, gap=0.5)
    add(tmp_path, frame_sampling="random", gap=0.6)
    payload = saved(tmp_path)
    assert len(payload["evaluations"]) == 6
    assert payload["gap"] == 0.6 and payload["frame_sampling"] == "random"
    assert payload["evaluations"][payload["key"]]["gap"] == 0.6
    assert payload["eval_data_pattern"] == str(tmp_path / "validate*.tfrecord")
    assert payload["eval_files"] == 1 and payload["global_step"] == 10
    keys = sorted(payload["evaluations"])
    assert ("model.ckpt-10|" + str(tmp_path / "validate*.tfrecord")
            + "|bn_statistics=recompute:5|frame_sampling=default|seed=2018|top_k=20|"
              "bf16_compute=default") in keys
    # The same measurement again replaces its own entry only.
    add(tmp_path, gap=0.7)
    payload = saved(tmp_path)
    assert len(payload["evaluations"]) == 6 and payload["gap"] == 0.7
    assert sorted(entry["gap"] for entry in payload["evaluations"].values()) == \
        [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def test_a_file_of_the_earlier_format_is_kept_as_the_first_entry(tmp_path):
    old = {"checkpoint": str(tmp_path / "model.ckpt-10"), "global_step": 10,
           "bn_statistics": "moving", "recompute_batches": None, **RESULT, "gap": 0.25}
    (tmp_path / "eval_results.json").write_text(json.dumps(old))
    assert eval_results.latest_evaluation(str(tmp_path)).gap == 0.25
    add(tmp_path, gap=0.5)
    payload = saved(tmp_path)
    # Kept with every field it had; the settings today's entries write are null.
    kept = {key: entry for key, entry in payload["evaluations"].items()
            if {name: entry[name] for name in old} == old}
    assert len(payload["evaluations"]) == 2 and payload["gap"] == 0.5
    assert list(kept) == ["model.ckpt-10|unrecorded|bn_statistics=moving|frame_sampling="
                          "unrecorded|seed=unrecorded|top_k=unrecorded|bf16_compute=unrecorded"]
    assert {value for name, value in next(iter(kept.values())).items()
            if name not in old} == {None}
    assert eval_results.latest_evaluation(str(tmp_path)).gap == 0.5


ENTRY = '"checkpoint": "m/model.ckpt-1", "global_step": 1'


@pytest.mark.parametrize("content, says", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[1, 2]", "expected an object, found a list"),
    (b'{"gap": 0.5}', "has no 'checkpoint' key"),
    (b'{%s, "evaluations": [1]}' % ENTRY.encode(), "evaluations: expected an object, found a list"),
    (b'{%s, "gap": "high"}' % ENTRY.encode(), "gap: 'high' is not a number"),
    (b'{%s, "evaluations": {"k": {%s, "gpa": 0.5}}}' % (ENTRY.encode(), ENTRY.encode()),
     "evaluations.k: unknown key(s) 'gpa'"),
    (b'{%s, "evaluations": {"k": {%s, "seed": "1"}}}' % (ENTRY.encode(), ENTRY.encode()),
     "evaluations.k: seed: '1' is not an integer"),
])
def test_a_damaged_file_is_refused_in_one_line_and_kept(tmp_path, content, says):
    """Each damage is one line naming the file and the key, the file kept.
    Mutation tried: EvaluationStore.from_json taking "evaluations" as it is
    (unchecked) -> the 'gpa' and '1' entries were read and this failed."""
    path = tmp_path / "eval_results.json"
    path.write_bytes(content)
    for call in (lambda: add(tmp_path), lambda: eval_results.latest_evaluation(str(tmp_path))):
        with pytest.raises(UserError) as caught:
            call()
        line = str(caught.value)
        assert "\n" not in line and line.startswith(f"{path}: {says}"), line
        assert "left as it is" in line
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["eval_results.json"]


def test_checkpoint_outside_the_dir_is_keyed_by_its_path(tmp_path):
    (tmp_path / "swa").mkdir()
    eval_results.record(str(tmp_path / "bf16"), eval_results.measurement(
        str(tmp_path / "swa" / "model.ckpt-10"), str(tmp_path / "v*"), **SETTINGS),
        intervals.EvalResult.of_videos(RESULT), 1)
    add(tmp_path / "bf16")
    keys = sorted(saved(tmp_path / "bf16")["evaluations"])
    assert keys[0].startswith(str(tmp_path / "swa" / "model.ckpt-10") + "|")
    assert keys[1].startswith("model.ckpt-10|")


def test_a_damaged_segment_file_is_refused_in_one_line(tmp_path):
    """segment_eval_results.json is read as strictly, with the same message.
    Mutation tried: read_evaluations(directory, SEGMENT) reading
    eval_results.json -> no store, {} and this failed."""
    path = tmp_path / eval_results.SEGMENT_RESULTS
    path.write_text('{%s, "segment_map": 0.5, "evaluations": {"k": {%s, "segment_map": "x"}}}'
                    % (ENTRY, ENTRY))
    with pytest.raises(UserError) as caught:
        eval_results.read_evaluations(str(tmp_path), eval_results.SEGMENT)
    line = str(caught.value)
    assert line.startswith(f"{path}: evaluations.k: segment_map: 'x' is not a number")
    assert "\n" not in line and "left as it is" in line


def test_video_and_segment_evaluations_keep_their_own_files_and_keys(tmp_path):
    """A segment evaluation goes to segment_eval_results.json with the key of
    today's files (its settings sorted, None as "None"), written without the
    video-level settings; a video one to eval_results.json, its settings
    written even when None. Mutation tried: kind_of always VIDEO -> the
    segment one went to eval_results.json; Evaluation.to_json writing the
    segment settings for both kinds -> "top_k": null was missing."""
    pattern = str(tmp_path / "v*.tfrecord")
    segment = eval_results.measurement(str(tmp_path / "model.ckpt-3"), pattern, seed=7,
                                       segment_size=5)
    eval_results.record(str(tmp_path), segment,
                        intervals.EvalResult(segment_map=0.5, num_segments=10))
    add(tmp_path, pattern="v*.tfrecord")
    payload = json.loads((tmp_path / eval_results.SEGMENT_RESULTS).read_text())
    assert payload["key"] == (f"model.ckpt-3|{pattern}|bf16_compute=None|bn_statistics=moving|"
                              f"frame_sampling=None|recompute_batches=None|seed=7|segment_size=5")
    assert "top_k" not in payload and "eval_files" not in payload
    assert payload["num_segments"] == 10 and isinstance(payload["num_segments"], int)
    assert len(saved(tmp_path)["evaluations"]) == 1 and saved(tmp_path)["top_k"] == 20
    eval_results.record(str(tmp_path), eval_results.measurement(
        str(tmp_path / "model.ckpt-4"), pattern), intervals.EvalResult.of_videos(RESULT))
    assert {name: saved(tmp_path)[name] for name in ("top_k", "eval_files", "seed")} == \
        {"top_k": None, "eval_files": None, "seed": None}
    with pytest.raises(ValueError, match="gap"):
        eval_results.record(str(tmp_path), segment, intervals.EvalResult(gap=0.5))


def test_an_eval_result_gives_back_its_metrics_and_lines():
    """EvalResult holds the metrics functions' values as they are, in their
    order (the events, the printed lines and the stores depend on it); a
    segment result without refinement has no retrieval counts.
    Mutation tried: dropping "num_retrieved" from EvalResult.SEGMENT_METRICS
    -> the refined result's metrics differed from segment_metrics'."""
    import numpy as np

    from training import metrics
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels, ratings = np.array([0, 0, 1, 1]), np.array([1, 0, 0, 1])
    for retrieved in (None, np.array([1, 1, 0, 1], bool)):
        values = metrics.segment_metrics(scores, labels, ratings, retrieved)
        result = intervals.EvalResult.of_segments(values)
        assert list(result.metrics().items()) == list(values.items())
        assert result.summary("x") == metrics.format_segment_summary(values, "x")
        assert result.is_segment and (result.num_retrieved is None) == (retrieved is None)
    accumulator = metrics.EvaluationMetrics(3, 2)
    accumulator.accumulate(np.array([[0.9, 0.1, 0.2]]), np.array([[1, 0, 1]]), 0.5)
    values = accumulator.get()
    video = intervals.EvalResult.of_videos(values)
    assert list(video.metrics().items()) == list(values.items())
    assert video.summary("y") == metrics.format_summary(values, "y")
    assert not video.is_segment and video.ids_digest() is None
