"""The runtime: executes plans. Never imports control, cli or policy code.

Kept empty so that the supervisor process (runtime/spawn.py starts
``localaistack.runtime.supervisor``'s ``main``) imports as little as possible.
"""
