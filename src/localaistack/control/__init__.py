"""The control layer: manifests, catalog, hardware profile, policy, planner, admission."""
