"""The search service: study files (space), storages and studies (study), the Optuna objective and
worker processes (objective, workers), and exporting a trial for final training (export)."""
