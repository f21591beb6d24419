"""Stage records written for report tests (training.stage_files)."""
from __future__ import annotations

from typing import Optional

from training import stage_files


def write_swa_record(directory, window: int, fit_pattern: Optional[str],
                     bn_statistics: str = "last") -> None:
    """A whole swa.json (stage_files.SwaRecord, read strictly) of `window`
    checkpoints (steps 10, 20, ...), the window chosen on fit_pattern (None:
    given)."""
    steps = tuple(10 * (step + 1) for step in range(window))
    choice = fit_pattern and stage_files.WindowChoice(
        chosen=window, data_pattern=fit_pattern,
        candidates=(stage_files.WindowCandidate(window=window, steps=steps, gap=0.5),))
    stage_files.write_in(str(directory), stage_files.SwaRecord(
        source_dir=str(directory), checkpoint=f"model.ckpt-{steps[-1]}",
        checkpoints=tuple(stage_files.AveragedCheckpoint(path=f"model.ckpt-{step}", step=step)
                          for step in steps),
        count=window, bn_statistics=bn_statistics, recompute_batches=None,
        recompute_batch_size=None,
        swa_start=None, swa_end=None, last_n=window, model_variables=1, averaged_variables=1,
        bn_statistic_variables=0, window_choice=choice or None))
