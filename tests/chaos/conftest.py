"""The chaos suite (issue #17): every promise of las tried as an adversarial user would.

Real processes, real cgroups, a real small tmpfs for the full-disk cases, a real removed
home. Each test asserts the outcome: states, reasons, processes gone, cgroups removed,
bytes of output. The shared fixtures live in tests/conftest.py; helpers used by more than
one chaos file live here.
"""
