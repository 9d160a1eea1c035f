"""Beyond one machine, on Ray (the optional `threads-search[ray]` extra).

`embed` over Ray Data with an actor pool (`embed.py`), and sharded search with one Ray actor per
index shard (`shards.py`). Nothing outside this package imports ray; every module here imports
it inside the functions that need it, through `cluster.require_ray`.
"""
