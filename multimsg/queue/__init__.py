"""The queue: where accepted messages and uploaded files live until delivered.

- ``states``: the message states and what makes one final.
- ``layout``: the data folder's layout (the one owner of paths under MULTIMSG_HOME).
- ``store``: the message store contract and its TinyDB and in-memory implementations.
- ``spool``: the uploaded-file spool contract and its file implementation.
- ``retry``: the retry policy (backoff, attempts, validity).
- ``drain``: the delivery engine of a data folder (``run_pass``, and what lasts across passes);
  ``scheduler``: one pass (lanes, pools, outcomes); ``pacing``: per-service and per-destination limits.
- ``counters``: queue figures kept with the store, for /metrics and ``multimsg stats``.
- ``storage``: the atomic TinyDB storage class.
"""
