"""The search service: study files (space), storages and studies (study), the Optuna objective and
worker processes (objective, workers), exporting a trial for final training (export), and the
heartbeat that `stl-tune proxy` adds for workers behind it (proxy)."""
