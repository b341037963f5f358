"""moec.ir."""
