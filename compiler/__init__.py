"""moec.compiler."""
