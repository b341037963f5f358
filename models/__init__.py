"""moec.models."""
