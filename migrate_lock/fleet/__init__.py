"""Fleets: one command for many tenant schemas or databases (docs/tenants.md).

``upgrade_fleet`` (``upgrade --tenants``), ``seed_fleet`` (``seed --tenants``) and
``fleet_plan`` (``status``, ``current`` and ``plan --tenants``), all in run.py; the
tenants' sources and sharding in sources.py, the batched read of where they stand in
plan.py, the worker processes in worker.py, progress and the summary in report.py, the
CLI's options in cli.py. The package imports nothing until used: ``migrate-lock`` loads
its cli.py on every start.
"""
