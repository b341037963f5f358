"""moec.backends."""
