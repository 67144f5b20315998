"""The runtime: executes plans. Never imports control, cli or policy code.

Kept empty so that the supervisor process (``python -m localaistack.runtime.supervisor``)
imports as little as possible.
"""
