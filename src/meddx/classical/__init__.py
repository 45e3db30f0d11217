"""Classical (non-learned) baselines: SimpleITK registration."""
