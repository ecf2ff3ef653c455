"""`tunelab sweep`: a grid or an Optuna search over training options, each trial a comparison experiment."""
