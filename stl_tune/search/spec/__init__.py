"""What a study searches: its study file and what is checked or queued before any trial.

A layer of the search package: its modules import from this layer and the ones below it only
(stl_tune/search/__init__.py lists the layers).

    space      study files: the spec, its validation, the plug-in names; suggest_config
    plugins    a study's sampler and pruner
    prior      the prior sampler: PriorBand's draws around the known recipe
    datacheck  the data against a study, before any trial
    warmstart  the known recipe, --enqueue, --from-study
"""
