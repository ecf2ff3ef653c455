"""--keep-best: the artifact of the best validation so far, kept in OUT/best/ next to the last one.

OUT/best/ holds what the technique saves (the LoRA file, the embedding, the DreamBooth pipeline...) and
best.json (metric, value, step). It is written beside and renamed into place, so it is always one whole
artifact; a tie keeps the earlier step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

FOLDER = "best"
RECORD = "best.json"


class BestArtifact:
    def __init__(self, out_dir: Path, metric: str, higher_is_better: bool):
        self.folder = out_dir / FOLDER
        self.metric, self.higher_is_better = metric, higher_is_better
        self.step: int | None = None
        self.value: float | None = None

    def better(self, value: float) -> bool:
        if self.value is None:
            return True
        return value > self.value if self.higher_is_better else value < self.value

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.step = self.value = None

    def resume(self, points: list[dict]) -> None:
        """The best of the points a resumed run keeps; a later best it wrote before the stop is written again
        when the resumed run reaches that step (the same weights, the same value)."""
        self.step = self.value = None
        for point in points:
            if self.metric in point and self.better(point[self.metric]):
                self.step, self.value = point["step"], point[self.metric]

    def consider(self, point: dict, save: Callable[[Path], Path]) -> bool:
        """Keep this step's artifact when its value is the best yet; `save(folder)` writes the artifact there."""
        if not self.better(point[self.metric]):
            return False
        self.step, self.value = point["step"], point[self.metric]
        partial = self.folder.with_name(FOLDER + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save(partial)
        (partial / RECORD).write_text(json.dumps(self.summary(), indent=2) + "\n")
        shutil.rmtree(self.folder, ignore_errors=True)
        partial.rename(self.folder)
        return True

    def summary(self) -> dict:
        return {"metric": self.metric, "value": self.value, "step": self.step, "folder": str(self.folder)}
