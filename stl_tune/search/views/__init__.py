"""How a study is shown while it runs: read from the storage, written nowhere.

A layer of the search package: its modules import from this layer and the ones below it only
(stl_tune/search/__init__.py lists the layers).

    eta   the time a study has left, and the line that says it
    live  the live view
"""
