"""vaegrid: correct, fast, resumable hyperparameter grid search over VAE training."""

__version__ = "0.1.0"
