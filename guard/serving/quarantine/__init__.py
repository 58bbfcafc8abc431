"""The quarantine of flagged inputs: what the gateway did not find clean, kept durably for review,
for scans of the traffic (`guard quarantine export` -> `guard scan-data`) and for the next
calibration (docs/quarantine.md).

settings: what `guard serve --quarantine` configures; records: what one record holds; store: the
SQLite database; writer: the thread that fills it; hook: where the data plane hands requests over.
Nothing is imported here, so the command line reads a store without loading the serving stack.
"""
