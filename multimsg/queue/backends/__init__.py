"""Storage backends: each module implements the contracts of ``queue/store.py``
(records, leases, due index, figures) and ``queue/spool.py`` (content).

- ``memory``: everything in this process's memory (tests, experiments);
- ``tiny``: TinyDB shards and a spool folder under the data folder (the embedded default);
- ``redis``: records, due index, leases, figures and upload bytes in one Redis, shared by
  several gateways (``MULTIMSG_BACKEND=redis://...``; imports the ``redis`` package).
"""
