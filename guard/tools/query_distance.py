"""The query-attack distance of a model directory whose `[clients]` table matches queries by
distance (`match = "distance"`), derived by `guard calibrate --model DIR` from the same clean
samples as the thresholds: the shortest distance between two clean queries the model answers
differently (guard.detection.query_distance.derive), measured on what the gateway's watch reads
(the preprocessor's query rows, else the guarded input as sent) and the answer it records (the
first output's top-1)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from guard.detection.calibration.derive import chunks
from guard.detection.calibration.references import References
from guard.detection.pipeline import GuardPipeline
from guard.detection.queries import QuerySettings
from guard.detection.query_distance import derive, embed


def query_distance(
    pipeline: GuardPipeline, references: References, output: str, settings: QuerySettings, batch_size: int = 256
) -> float:
    embedded, answers = [], []
    with torch.inference_mode():
        for chunk in tqdm(list(chunks(references, batch_size)), desc="query distance", unit="batch", leave=False):
            inputs = pipeline.batch([chunk])
            rows = pipeline.query_rows(inputs)
            if rows is None:
                rows = chunk[pipeline.guarded_input]
            embedded.append(embed(rows, settings.dims))
            answers.append(pipeline.outputs(inputs, [output])[output].reshape(len(rows), -1).argmax(axis=1))
    return derive(np.concatenate(embedded), np.concatenate(answers), settings.dims)
