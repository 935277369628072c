"""What runs trials, and the steps of `stl-tune run`, `worker` and `confirm` around them.

A layer of the search package: its modules import from this layer and the ones below it only
(stl_tune/search/__init__.py lists the layers).

    objective    the one bridge between Optuna and the trainer
    checkpoints  the artifact store of resume checkpoints
    keep         what completed trials keep for an ensemble: validation predictions, the best K models
    ensemble     greedy ensemble selection over those predictions (`stl-tune ensemble`)
    workers      the worker loop
    epochlog     a worker's log lines
    probe        what one trial costs on this host's CPU
    launch       worker processes on one host
    session      what run, worker and confirm do below the command line
"""
