"""Layer 3, detection: the guard pipeline run once per batch (preprocess, variants, ONE backend
call, detector scores, verdicts), the detectors and squeezers, how detectors combine (ensemble)
and how thresholds are set on clean data. It knows backends, not servers or clients."""
