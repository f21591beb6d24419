"""stacking.fit --segment_labels: member weights fitted on the rated
(segment, class) pairs of 2019 segment-rated records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import segment_data
from ensemble import build, report
from support.members import make_member
from support.reliability import run_cases
from support.segment_runs import rate_by_model
from training import intervals, metrics, predict
from training.cli import UserError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source_pattern(tmp_path_factory):
    return segment_data(tmp_path_factory, "stacking_segment_source", videos_per_shard=24)


@pytest.fixture(scope="module")
def members(source_pattern, tmp_path_factory):
    """Two randomly initialised FrameMeanMoeModel dirs: "good" rates the
    segments (rated_pattern), "other" is noise to them and scores higher on
    average (so that a fit ignoring the ratings would prefer it)."""
    root = tmp_path_factory.mktemp("stacking_segments")
    dirs = [make_member(root / f"seed{seed}", seed=seed)
            for seed in (1, 2) if (root / f"seed{seed}").mkdir() is None]
    model = predict.open_members(dirs)
    try:
        means = predict.rated_pair_scores(model, source_pattern,
                                           batch_size=50).scores.mean(axis=0)
    finally:
        model.close()
    low, high = (dirs if means[0] < means[1] else dirs[::-1])
    return {"good": low, "other": high}


@pytest.fixture(scope="module")
def rated_pattern(members, source_pattern, tmp_path_factory):
    return rate_by_model(source_pattern, members["good"],
                         str(tmp_path_factory.mktemp("stacking_segment_data")))


def test_weights_fitted_on_rated_segments(members, rated_pattern, tiny_data, tmp_path):
    """The member whose scores define the ratings gets almost all the weight,
    the file says it was fitted on segments (metric, files, pairs) and holds
    both Segment MAPs and no GAP (the video-level report refuses it);
    ensemble.build reads it; unrated records are refused
    in one line. "other" scores higher on average: a fit that ignores the
    ratings (every target 1) would give it the weight. Mutations
    seen to fail: every target 1; the scores of class 0 instead of the rated
    class (predict.rated_pair_scores: they differ from evaluate_segments');
    members.check_dir_segment_records skipped; the provenance's digest of every
    rated pair's id, duplicates included (not the distinct videos)."""
    good, other = members["good"], members["other"]
    model = predict.open_members([good, other])
    try:
        pairs = predict.rated_pair_scores(model, rated_pattern, batch_size=50)
    finally:
        model.close()
    # The pairs' scores agree with predict.evaluate_segments, member by member.
    for column, member in enumerate((good, other)):
        alone = predict.open_model(member)
        try:
            expected = predict.evaluate_segments(alone, rated_pattern, batch_size=50)
        finally:
            alone.close()
        got = metrics.segment_metrics(pairs.scores[:, column], pairs.classes, pairs.ratings)
        assert got["segment_map"] == pytest.approx(expected.segment_map, abs=1e-9)
        assert got["segment_gap"] == pytest.approx(expected.segment_gap, abs=1e-9)
    output, refused_output = tmp_path / "weights.json", tmp_path / "refused.json"
    ran = run_cases({"stacking.fit": {"cases": [
        [f"--model_dirs={good},{other}", f"--data_pattern={rated_pattern}", "--segment_labels",
         f"--output_file={output}", "--batch_size=25"],
        [f"--model_dirs={good},{other}", "--segment_labels", f"--output_file={refused_output}",
         f"--data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}"]]}}, tmp_path / "cli")
    fitted, refused = ran["stacking.fit"][2]
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    payload = json.loads(output.read_text())
    assert payload["metric"] == "segment_map" and payload["data_pattern"] == rated_pattern
    assert payload["num_pairs"] == len(pairs.ratings) and payload["segment_size"] == 5
    assert payload["num_positive_pairs"] == int(pairs.ratings.sum())
    assert payload["num_videos"] == pairs.num_videos
    assert payload["weights"][0] > 0.9 and sum(payload["weights"]) == pytest.approx(1.0)
    assert payload["member_segment_map"][0] == 1.0 > payload["member_segment_map"][1]
    assert payload["segment_map"] == 1.0 >= payload["segment_map_uniform"]
    assert "gap" not in payload and "gap_uniform" not in payload
    assert payload["cross_entropy"] < payload["cross_entropy_uniform"]
    assert payload["provenance"] == [{
        "stage": "stacking.fit", "choice": "weights",
        "data_files": sorted(str(path) for path in Path(rated_pattern).parent.glob("*.tfrecord")),
        "video_ids_sha1": intervals.video_ids_digest(set(pairs.ids.tolist()))}]
    assert "stacked weights: CE" in fitted.stdout and "Segment_MAP 1.0000" in fitted.stdout
    loaded_members, loaded = build.resolve_members_and_weights("", "", str(output))
    assert loaded_members == [good, other]
    np.testing.assert_allclose(loaded, payload["weights"], rtol=1e-9)
    with pytest.raises(UserError, match="has no 'gap'"):
        report.read_stacking(str(output))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stdout
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --data_pattern: ") and "no segment_labels" in last, last
    assert not refused_output.exists()
