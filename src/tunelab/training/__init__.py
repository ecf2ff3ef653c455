"""The one training loop every technique runs through."""
