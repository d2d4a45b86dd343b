"""The library API the CLI calls, one module per concern; each function chains detect → plan → render → run → health.

``resolve`` (host, model, engine from the settings), ``stack`` (plan, render, up), ``day2`` (status, logs,
chat, smoke, doctor), ``data`` (backup, restore, upgrade), ``measure`` (bench, tune), ``fleet`` (many hosts).
Functions take settings and paths, call the pure stages and do the I/O between them; they return plain data
for the CLI to print and never print.
"""
