"""The settings that the command line shows in its help: default storage, environment variables,
heartbeat timing. They live apart from the modules that read them (urls, storages, session) so that
defining the command line imports neither Optuna nor SQLAlchemy: `stl-tune --help` stays fast
(tests/test_structure.py checks it)."""

DEFAULT_STORAGE = "sqlite:///storage/stl-tune.db"
STORAGE_ENV = "STL_TUNE_STORAGE"  # the storage URL when --storage is not given; launched workers get it here
ARTIFACTS_ENV = "STL_TUNE_ARTIFACTS"  # the checkpoint folder when --artifacts is not given
HEARTBEAT_INTERVAL_S = 60  # a RUNNING trial's worker writes a heartbeat this often ...
GRACE_PERIOD_S = 180  # ... and one silent this long is failed (its worker died) and retried
HEARTBEAT_ENV = "STL_TUNE_HEARTBEAT_INTERVAL"  # overrides HEARTBEAT_INTERVAL_S (seconds)
GRACE_ENV = "STL_TUNE_GRACE_PERIOD"  # overrides GRACE_PERIOD_S (seconds)
