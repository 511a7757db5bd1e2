"""The side-by-side benchmark of `flashsale bench`: one load generator, several systems.

`runner.run_bench` drives flashsale and three baselines (a Redis lock around
Postgres, one conditional UPDATE per request, a bare aiohttp answer) with the
same requests at the same concurrency, then measures the pause scenario of the
lock articles and the consumer's apply rate. The `flashsale` command starts
the stack and calls it; nothing here starts flashsale itself.
"""
