"""moec.backends.interp."""
