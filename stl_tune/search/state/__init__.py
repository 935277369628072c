"""What a study holds: the study and its trials, how each trial ended, its limits, and what is
read from it afterwards.

A layer of the search package: its modules import from this layer and the ones below it only
(stl_tune/search/__init__.py lists the layers).

    study    creating a study once, loading it with its spec
    trials   counts, the best trial, the budget's claim check
    outcome  how a trial ended, as one value, and the one function that settles it
    limits   the time budget and the patience
    confirm  `stl-tune confirm`: the best trials re-trained with new seeds
    export   a trial's config, set up for final training
"""
