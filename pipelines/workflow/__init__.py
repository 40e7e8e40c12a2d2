"""The workflow engine: stage context and table, fingerprints, the state file, the run lock, liveness, recovery,
service probes, the run summary, the runner and the per-stage job entry. Import the submodules directly."""
