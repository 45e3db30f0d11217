"""Classical (non-learned) baselines: SimpleITK registration; scikit-image denoisers for CT and zero-filled /
TV compressed-sensing reconstruction for undersampled MRI, with their strengths tuned on a validation split only."""
