"""Where a study lives: the storage behind a URL, for many workers.

A layer of the search package: its modules import from this layer and the ones below it only
(stl_tune/search/__init__.py lists the layers).

    urls       storage URLs, masked for printing
    storages   opening a storage (SQLite, PostgreSQL, gRPC) for many workers; stale trials
    reconnect  the storage for a database server, which waits out a lost server
    proxy      the heartbeat that `stl-tune proxy` adds for workers behind it
"""
